"""Multi-view fitting of a morphable face model to a session's detected landmarks.

``fitter`` is the batched torch problem (one identity, per-frame expression and
head pose, cameras fixed); ``session`` runs it on a session's landmarks and
calibration and stores the result (zarr + Parquet); ``quality`` gates a fit
against the detector's own noise; ``overlay`` draws a fit over the photo for
people. Only ``fitter`` (and ``session``, which uses it) import torch, so the
gate thresholds in ``quality`` and this package import without it.
"""
