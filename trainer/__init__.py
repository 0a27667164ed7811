"""The program inside the trainer pod (`visioninapp-trainer`)."""
