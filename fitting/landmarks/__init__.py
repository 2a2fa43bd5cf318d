"""Face landmarks: mediapipe's 478 points per image, and their per-session store.

``detect`` runs mediapipe FaceMesh on each image (and on its mirror image, to
score the detection) and collects a session's grid into ``SessionLandmarks``;
``store`` writes and reads that as a zarr v3 store. They are apart so that
readers of the store never import mediapipe, and detection never imports zarr.
mediapipe is imported inside the detector, never on import of this package.
"""
