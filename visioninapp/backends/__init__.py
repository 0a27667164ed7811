"""Interfaces for shared services and their embedded backends."""
