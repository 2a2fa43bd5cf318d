"""Shared pycolmap/pyceres plumbing for the project's bundle adjustments.

COLMAP has no 5-term ``k1 k2 p1 p2 k3`` camera model: cameras with ``k3`` use
``FULL_OPENCV`` (fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6) and the rational terms
k4..k6 must stay 0. pycolmap's adjuster exposes its Ceres problem (a
``pyceres.Problem`` once pyceres is imported), whose camera parameter blocks are
the very arrays ``rec.cameras[id].params`` views, so a ``SubsetManifold`` can hold
single parameters.
"""

from __future__ import annotations

from typing import Any

#: FULL_OPENCV parameter indices of the rational terms k4, k5, k6.
FULL_OPENCV_RATIONAL = (9, 10, 11)


def hold_rational_terms(problem: Any, rec: Any, options: Any) -> list[Any]:
    """Hold k4..k6 of every refined ``FULL_OPENCV`` camera at their value (0).

    A parameter block has one manifold, and pycolmap has already set one on the
    blocks whose intrinsics ``options`` keeps partly fixed (e.g. the principal
    point); the replacement holds those parameters too. Returns the manifolds:
    Ceres keeps raw pointers, so the caller keeps them alive until the solve ends.
    """
    import pyceres

    manifolds = []
    for camera_id in sorted(rec.cameras):
        camera = rec.cameras[camera_id]
        params = camera.params
        if camera.model.name != "FULL_OPENCV":
            continue
        if not problem.has_parameter_block(params) or problem.is_parameter_block_constant(params):
            continue
        constant = set(FULL_OPENCV_RATIONAL)
        if not options.refine_focal_length:
            constant |= {0, 1}
        if not options.refine_principal_point:
            constant |= {2, 3}
        if not options.refine_extra_params:
            constant |= set(range(4, len(params)))
        manifold = pyceres.SubsetManifold(len(params), sorted(constant))
        problem.set_manifold(params, manifold)
        manifolds.append(manifold)
    return manifolds
