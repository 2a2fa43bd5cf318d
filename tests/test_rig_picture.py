"""``fitting.rig_picture``: where the rig looks, the camera picture, and the picture in the calibration metadata."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import cv2
import dagster as dg
import numpy as np
import pytest

from capture_schema import derived_layout as layout
from capture_schema.cameras import Camera, look_at
from fitting.face_models.builtin import builtin_face_model
from fitting.rig_picture import PICTURE_PX, place_head, rig_picture, rig_target

POINT = np.array([0.12, -0.05, 0.31])


def _camera(center, target=POINT, size: int = 400, up=(0.0, -1.0, 0.0)) -> Camera:
    R, t = look_at(np.asarray(center, np.float64), np.asarray(target, np.float64), np.asarray(up))
    return Camera(width=size, height=size, fx=2.0 * size, fy=2.0 * size, cx=size / 2, cy=size / 2, R=R, t=t)


def _ring(target=POINT, n: int = 7) -> dict[str, Camera]:
    """Cameras on an arc 1 m from ``target`` at three heights, all aimed at it (y is down)."""
    cams = {}
    for i, az in enumerate(np.linspace(-70, 70, n)):
        a = np.deg2rad(az)
        height = (-0.25, 0.0, 0.2)[i % 3]
        cams[f"cam{i:02d}"] = _camera(target + np.array([np.sin(a), height, -np.cos(a)]), target)
    return cams


def _decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable PNG"
    return image


def _assert_drawing(image: np.ndarray) -> None:
    assert image.shape == (PICTURE_PX[1], PICTURE_PX[0], 3)
    ink = (image.min(axis=2) < 200).mean()
    assert 0.01 < ink < 0.6, f"{ink:.3f} of the pixels are drawn on"


def test_rig_target_is_the_point_the_cameras_look_at() -> None:
    assert np.allclose(rig_target(_ring()), POINT, atol=1e-9)
    two = {"a": _camera([1.0, 0.0, 0.0]), "b": _camera([0.0, 0.3, -1.0])}
    assert np.allclose(rig_target(two), POINT, atol=1e-9)


def test_rig_target_is_the_least_squares_point_of_axes_that_miss() -> None:
    # Two axes along x (through y = +-0.1) and one along y (through x = 0.2, z = 0): the closest point is
    # midway between the first two (y = 0), on the third's line in x, and at z = 0 where all three pass.
    cams = {"a": _camera([-1.0, 0.1, 0.0], [1.0, 0.1, 0.0]), "b": _camera([-1.0, -0.1, 0.0], [1.0, -0.1, 0.0]),
            "c": _camera([0.2, -1.0, 0.0], [0.2, 1.0, 0.0], up=(0.0, 0.0, 1.0))}
    assert np.allclose(rig_target(cams), [0.2, 0.0, 0.0], atol=1e-9)


def test_parallel_axes_have_no_target() -> None:
    parallel = {"a": _camera([0.0, 0.0, -1.0], [0.0, 0.0, 0.0]), "b": _camera([0.3, 0.0, -1.0], [0.3, 0.0, 0.0])}
    with pytest.raises(ValueError, match="parallel"):
        rig_target(parallel)
    with pytest.raises(ValueError, match="parallel"):
        rig_target({"only": _camera([0.0, 0.0, -1.0])})


def test_picture_is_a_deterministic_png_of_the_rig() -> None:
    model = builtin_face_model()
    rig = _ring()
    head = place_head(rig, model.vertices())
    first = rig_picture(rig, head, model.faces, title="ring")
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_drawing(_decode(first))
    assert rig_picture(rig, head, model.faces, title="ring") == first
    # Points instead of a mesh, and the cameras alone, are pictures too.
    _assert_drawing(_decode(rig_picture(rig, head)))
    _assert_drawing(_decode(rig_picture(rig)))


def test_a_moved_or_rolled_camera_changes_the_picture() -> None:
    rig = _ring()
    before = _decode(rig_picture(rig))
    moved = dict(rig, cam03=_camera(POINT + np.array([0.2, -0.4, -0.9])))
    flip = np.diag([-1.0, -1.0, 1.0])  # rolled 180 degrees about its optical axis
    rolled = dict(rig, cam03=replace(rig["cam03"], R=flip @ rig["cam03"].R, t=flip @ rig["cam03"].t))
    for changed in (moved, rolled):
        after = _decode(rig_picture(changed))
        assert (np.abs(after.astype(int) - before).max(axis=2) > 40).sum() > 50


def test_place_head_puts_an_upright_face_towards_the_cameras() -> None:
    model = builtin_face_model()
    rig = _ring()
    template = model.vertices()
    head = place_head(rig, template)
    assert np.allclose(head.mean(axis=0), rig_target(rig), atol=1e-9)
    nose, back = int(np.argmin(template[:, 2])), int(np.argmax(template[:, 2]))  # the face looks towards -z
    top, chin = int(np.argmin(template[:, 1])), int(np.argmax(template[:, 1]))  # y is down
    front = rig["cam03"]  # the middle camera of the arc
    assert np.linalg.norm(head[nose] - front.center) < np.linalg.norm(head[back] - front.center)
    pixels = front.project(head[[top, chin]])
    assert pixels[0, 1] < pixels[1, 1], "the forehead must be above the chin in the front camera's image"


@pytest.mark.parametrize("cameras, vertices, faces, message", [
    ({}, None, None, "non-empty mapping"),
    ({"a": "not a camera"}, None, None, "a are not"),
    (None, np.zeros((10, 2)), None, r"\(N, 3\)"),
    (None, np.zeros((0, 3)), None, r"non-empty \(N, 3\)"),
    (None, np.full((4, 3), np.nan), None, "finite"),
    (None, np.zeros((4, 3)), np.array([[0, 1, 4]]), "outside the 4 vertices"),
    (None, np.zeros((4, 3)), np.zeros((2, 3), np.float32), r"\(F, 3\) array of vertex indices"),
    (None, None, np.array([[0, 1, 2]]), "faces were given without vertices"),
])
def test_bad_input_is_a_clear_value_error(cameras, vertices, faces, message) -> None:
    with pytest.raises(ValueError, match=message):
        rig_picture(_ring() if cameras is None else cameras, vertices, faces)


def test_calibration_metadata_shows_the_rig(session_copy) -> None:
    from pipelines.assets.calibration import camera_calibration
    from pipelines.assets.ingest import session_manifest
    from pipelines.partitions import SESSIONS_PARTITION
    from pipelines.resources import CapturesResource, StorageResource

    instance = dg.DagsterInstance.ephemeral()
    key = session_copy.name
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    result = dg.materialize(
        [session_manifest, camera_calibration], partition_key=key, instance=instance,
        resources={"captures": CapturesResource(root=str(session_copy.parent)),
                   "storage": StorageResource(url=f"file://{session_copy.parent.parent / 'derived'}")})
    markdown = result.asset_materializations_for_node("camera_calibration")[0].metadata["cameras_picture"].value
    encoded = re.fullmatch(r"!\[cameras\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert encoded, markdown[:200]
    _assert_drawing(_decode(base64.b64decode(encoded.group(1))))
    # drawn once, with the calibration, and read back for every session that uses it
    key = result.asset_materializations_for_node("camera_calibration")[0].metadata["calibration_key"].value
    stored = session_copy.parent.parent / "derived" / layout.calibration_dir(key) / layout.CALIBRATION_PICTURE_FILE
    assert stored.read_bytes() == base64.b64decode(encoded.group(1))
