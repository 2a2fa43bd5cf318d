"""Triangulation and pycolmap bundle adjustment of a static camera rig and the points it saw.

``triangulation`` (linear multi-view DLT, reprojection errors) gives the initial
points; ``points`` refines cameras and points together with a robust (Cauchy,
continuation) pycolmap adjuster and ``report`` measures what it did. This is a
library for rigs seen through *unknown* points (keypoints, e.g. a marker-less
rig); nothing in the pipeline calls it yet, only its tests do.

Which adjuster to use: to calibrate the capture rig from calibration boards use
``fitting.calibration`` (its ``refine`` module is the board-rig adjuster: board
corners are known, constant points, so the board fixes gauge and scale); use
``points`` only when the 3D points are unknowns too. ``colmap_solver`` holds the
pycolmap/pyceres plumbing both adjusters share. pycolmap and pyceres are imported
inside the functions that solve, never on import of this package.
"""
