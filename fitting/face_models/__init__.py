"""Morphable face models behind one interface (``base.FaceModel``): built-in, ICT-FaceKit, FLAME."""
