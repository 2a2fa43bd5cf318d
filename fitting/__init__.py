"""Geometry, one subpackage per concern; imports only ``capture_schema`` below it.

``calibration`` (rig calibration from board captures), ``bundle_adjustment``
(triangulation and point bundle adjustment of a rig), ``landmarks`` (mediapipe
detection and its store), ``face_models`` (morphable models behind one interface)
and ``face_fit`` (multi-view fitting, its store, gates and overlay). The modules
at this level are shared by several of them: ``camera_model`` (torch projection,
Rodrigues, undistortion), ``geometry`` (poses, alignment, normals) and
``image_io`` (safe decoding of a raw image). Heavy dependencies (torch, mediapipe,
pycolmap) are imported by the modules that need them, never by a package
``__init__``.
"""
