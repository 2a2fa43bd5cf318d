"""Synthetic capture sessions with ground truth kept apart from the capture."""
