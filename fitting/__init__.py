"""Geometry: calibration, landmarks, morphable models and multi-view fitting."""
