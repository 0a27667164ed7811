"""The inference runtime on each edge node (`visioninapp-edge`)."""
