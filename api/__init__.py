"""The FastAPI backend (`visioninapp-api`)."""
