"""Offline tools, run from the repository root and never shipped in the wheel.

``build_face_model`` (with the hand-designed modes of ``face_model_modes``) rebuilds
the built-in face model's packaged asset, ``fitting/face_models/assets/face_model.npz``:
``python -m tools.build_face_model [OUT]``. The runtime reads only the asset.
"""
