"""Converters OpenCV <-> COLMAP <-> transforms.json: smoke, bad input, known answers, round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pycolmap
import pytest

from capture_schema.cameras import Camera, look_at
from capture_schema.converters import (
    camera_id_from_image_name,
    camera_to_colmap,
    cameras_to_transforms,
    intrinsics_from_colmap,
    pose_from_colmap,
    pose_to_colmap,
    read_colmap_model,
    read_transforms,
    transforms_to_cameras,
    write_colmap_model,
    write_transforms,
)

TARGET = np.array([0.02, -0.05, 0.1])


def random_rig(seed: int = 0, n: int = 13) -> dict[str, Camera]:
    """``n`` cameras looking at TARGET from ~1 m; odd cameras have k3 == 0, even ones k3 != 0."""
    rng = np.random.default_rng(seed)
    cameras = {}
    for i in range(n):
        azimuth, elevation = rng.uniform(-1.2, 1.2), rng.uniform(-0.5, 0.5)
        ce = np.cos(elevation)
        direction = np.array([np.sin(azimuth) * ce, np.sin(elevation), -np.cos(azimuth) * ce])
        R, t = look_at(TARGET + rng.uniform(0.8, 1.2) * direction, TARGET)
        k3 = rng.uniform(-0.02, 0.02) if i % 2 == 0 else 0.0
        p1, p2 = rng.uniform(-1e-3, 1e-3, size=2)
        dist = (rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05), p1, p2, k3)
        cameras[f"cam{i:02d}"] = Camera(
            width=1024, height=1280, fx=rng.uniform(1000, 1400), fy=rng.uniform(1000, 1400),
            cx=512 + rng.uniform(-20, 20), cy=640 + rng.uniform(-20, 20), dist=dist, R=R, t=t,
        )
    return cameras


def random_points(seed: int = 1, n: int = 50) -> np.ndarray:
    return TARGET + np.random.default_rng(seed).uniform(-0.15, 0.15, size=(n, 3))


def assert_same_cameras(a: dict[str, Camera], b: dict[str, Camera], tol: float = 1e-9) -> None:
    assert list(a) == list(b)
    points = random_points()
    for cam_id in a:
        ca, cb = a[cam_id], b[cam_id]
        assert (ca.width, ca.height) == (cb.width, cb.height), cam_id
        np.testing.assert_allclose([cb.fx, cb.fy, cb.cx, cb.cy], [ca.fx, ca.fy, ca.cx, ca.cy], rtol=0, atol=tol)
        np.testing.assert_allclose(cb.dist, ca.dist, rtol=0, atol=tol)
        np.testing.assert_allclose(cb.R, ca.R, rtol=0, atol=tol)
        np.testing.assert_allclose(cb.t, ca.t, rtol=0, atol=tol)
        np.testing.assert_allclose(cb.project(points), ca.project(points), rtol=0, atol=1e-6)


# --- smoke -------------------------------------------------------------------------


def test_import_does_not_load_pycolmap():
    """Dagster re-imports code per step: the contract layer must not pull pycolmap in at import."""
    code = "import sys, capture_schema.converters; sys.exit('pycolmap' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_write_colmap_model_smoke(tmp_path):
    out = write_colmap_model(random_rig(n=2), tmp_path / "sparse")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.txt" for n in ("cameras", "images", "points3D", "rigs", "frames")
    )
    assert [p.name for p in tmp_path.iterdir()] == ["sparse"]  # no temp dir left behind


# --- known answers -----------------------------------------------------------------


def test_identity_camera_transform_matrix_flips_y_and_z():
    cam = Camera(width=640, height=480, fx=500, fy=500, cx=320, cy=240)
    frame = cameras_to_transforms({"c": cam})["frames"][0]
    np.testing.assert_array_equal(frame["transform_matrix"], np.diag([1.0, -1.0, -1.0, 1.0]))


def test_transform_matrix_holds_camera_centre_and_looks_down_minus_z():
    centre = np.array([0.3, -0.2, 1.5])
    R, t = look_at(centre, TARGET)
    cam = Camera(width=640, height=480, fx=500, fy=500, cx=320, cy=240, R=R, t=t)
    c2w = np.array(cameras_to_transforms({"c": cam})["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(c2w[:3, 3], centre, atol=1e-12)
    forward = -c2w[:3, 2]  # OpenGL cameras look down their -z axis
    np.testing.assert_allclose(forward, (TARGET - centre) / np.linalg.norm(TARGET - centre), atol=1e-12)
    # world "up" (-y, see look_at) is the camera's +y in OpenGL axes
    assert c2w[:3, 1] @ np.array([0.0, -1.0, 0.0]) > 0.9


def test_pose_to_colmap_known_quaternion():
    c, s = np.cos(np.pi / 2), np.sin(np.pi / 2)
    Rz90 = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    qvec, tvec = pose_to_colmap(Rz90, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(qvec, [np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)], atol=1e-15)
    np.testing.assert_array_equal(tvec, [1.0, 2.0, 3.0])


def test_images_txt_holds_wxyz_world_to_camera(tmp_path):
    cameras = random_rig(n=3)
    write_colmap_model(cameras, tmp_path / "m")
    lines = [ln for ln in (tmp_path / "m" / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for header, (cam_id, cam) in zip(lines[::2], cameras.items()):
        fields = header.split()
        assert fields[9] == cam_id
        qvec = np.array(fields[1:5], dtype=float)
        expected, _ = pose_to_colmap(cam.R, cam.t)
        np.testing.assert_allclose(qvec * np.sign(qvec[0]), expected, atol=1e-12)
        np.testing.assert_allclose(np.array(fields[5:8], dtype=float), cam.t, atol=1e-12)


@pytest.mark.parametrize(
    "model, params, expected",
    [
        ("SIMPLE_PINHOLE", [800, 320, 240], (800, 800, 320, 240, (0, 0, 0, 0, 0))),
        ("PINHOLE", [800, 810, 320, 240], (800, 810, 320, 240, (0, 0, 0, 0, 0))),
        ("SIMPLE_RADIAL", [800, 320, 240, 0.1], (800, 800, 320, 240, (0.1, 0, 0, 0, 0))),
        ("RADIAL", [800, 320, 240, 0.1, -0.02], (800, 800, 320, 240, (0.1, -0.02, 0, 0, 0))),
        ("OPENCV", [800, 810, 320, 240, 0.1, -0.02, 1e-3, -2e-3], (800, 810, 320, 240, (0.1, -0.02, 1e-3, -2e-3, 0))),
        (
            "FULL_OPENCV",
            [800, 810, 320, 240, 0.1, -0.02, 1e-3, -2e-3, 0.01, 0, 0, 0],
            (800, 810, 320, 240, (0.1, -0.02, 1e-3, -2e-3, 0.01)),
        ),
    ],
)
def test_readable_models_known_answer_and_pycolmap_projection(model, params, expected):
    fx, fy, cx, cy, dist = intrinsics_from_colmap(model, params)
    assert (fx, fy, cx, cy) == expected[:4]
    assert dist == pytest.approx(expected[4], abs=0)
    # the mapping is right only if pycolmap projects like our camera does
    ours = Camera(width=640, height=480, fx=fx, fy=fy, cx=cx, cy=cy, dist=dist)
    theirs = pycolmap.Camera(camera_id=1, model=model, width=640, height=480, params=params)
    cam_points = np.random.default_rng(3).uniform([-0.3, -0.3, 0.8], [0.3, 0.3, 1.2], size=(40, 3))
    np.testing.assert_allclose(theirs.img_from_cam(cam_points), ours.project(cam_points), rtol=0, atol=1e-6)


def test_pycolmap_projection_matches_camera_project(tmp_path):
    """pycolmap projects a written model's points half a pixel right of and below ``Camera.project``:
    COLMAP's top-left pixel centre is (0.5, 0.5), OpenCV's (0, 0); the unshifted parameters
    (``camera_to_colmap``, what the bundle adjustment uses) give the same pixels."""
    cameras = random_rig()
    points = random_points()
    write_colmap_model(cameras, tmp_path / "m", binary=True)
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    by_name = {img.name: img for img in rec.images.values()}
    for cam_id, cam in cameras.items():
        model, params = camera_to_colmap(cam)
        assert model == ("PINHOLE" if not any(cam.dist) else "OPENCV" if cam.dist[4] == 0 else "FULL_OPENCV")
        theirs = pycolmap.Camera(camera_id=1, model=model, width=cam.width, height=cam.height, params=params)
        pixels = theirs.img_from_cam(cam.world_to_camera(points))
        np.testing.assert_allclose(pixels, cam.project(points), rtol=0, atol=1e-6)
        image = by_name[cam_id]
        projected = np.array([image.project_point(p) for p in points])
        np.testing.assert_allclose(projected, cam.project(points) + 0.5, rtol=0, atol=1e-6)


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_colmap_round_trip(tmp_path, binary):
    cameras = random_rig(seed=7)
    write_colmap_model(cameras, tmp_path / "m", binary=binary)
    assert all(p.suffix == (".bin" if binary else ".txt") for p in (tmp_path / "m").iterdir())
    assert_same_cameras(cameras, read_colmap_model(tmp_path / "m"))


def test_colmap_round_trip_with_image_extension_and_overwrite(tmp_path):
    write_colmap_model(random_rig(seed=1), tmp_path / "m")
    cameras = random_rig(seed=2, n=4)
    write_colmap_model(cameras, tmp_path / "m", image_ext=".jpg")
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert sorted(img.name for img in rec.images.values()) == sorted(f"{c}.jpg" for c in cameras)
    assert_same_cameras(cameras, read_colmap_model(tmp_path / "m"))  # old 13-camera model fully replaced


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_colmap_points_and_observations(tmp_path, binary):
    cameras = random_rig(n=4)
    points = random_points(n=20)
    observations = {cam_id: cam.project(points) for cam_id, cam in cameras.items()}
    observations["cam01"][::3] = np.nan  # cam01 misses every third point
    del observations["cam03"]  # cam03 sees nothing
    write_colmap_model(cameras, tmp_path / "m", points, observations, binary=binary)
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert rec.is_valid()
    names = {img.image_id: img.name for img in rec.images.values()}
    assert rec.num_points3D() == len(points)
    for j, point_id in enumerate(sorted(rec.points3D)):
        point = rec.points3D[point_id]
        np.testing.assert_allclose(point.xyz, points[j], atol=1e-12)
        seen = sorted(names[el.image_id] for el in point.track.elements)
        assert seen == (["cam00", "cam02"] if j % 3 == 0 else ["cam00", "cam01", "cam02"])
        for el in point.track.elements:
            xy = rec.images[el.image_id].points2D[el.point2D_idx].xy
            # COLMAP's keypoints put the centre of the top-left pixel at (0.5, 0.5), ours at (0, 0)
            np.testing.assert_allclose(xy, observations[names[el.image_id]][j] + 0.5, atol=1e-9)
    assert_same_cameras(cameras, read_colmap_model(tmp_path / "m"))
    # re-running on unchanged input gives byte-identical files
    write_colmap_model(cameras, tmp_path / "again", points, observations, binary=binary)
    for f in (tmp_path / "m").iterdir():
        assert f.read_bytes() == (tmp_path / "again" / f.name).read_bytes(), f.name


def test_transforms_round_trip_and_deterministic_bytes(tmp_path):
    cameras = random_rig(seed=11)
    paths = {cam_id: f"images/neutral/{cam_id}.jpg" for cam_id in cameras}
    write_transforms(tmp_path / "a.json", cameras, paths)
    write_transforms(tmp_path / "b.json", random_rig(seed=11), paths)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    data = json.loads((tmp_path / "a.json").read_text())
    assert [f["file_path"] for f in data["frames"]] == list(paths.values())
    assert all(f["camera_model"] == "OPENCV" and f["camera_id"] for f in data["frames"])
    assert_same_cameras(cameras, read_transforms(tmp_path / "a.json"))


def test_round_trip_colmap_then_transforms(tmp_path):
    cameras = random_rig(seed=5)
    write_colmap_model(cameras, tmp_path / "m", binary=True)
    assert_same_cameras(cameras, transforms_to_cameras(cameras_to_transforms(read_colmap_model(tmp_path / "m"))))


def test_pose_round_trip_including_half_turns():
    rng = np.random.default_rng(9)
    rotations = [np.diag(d) for d in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1])]
    for _ in range(200):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotations.append(q * np.sign(np.diag(r)) * np.linalg.det(q * np.sign(np.diag(r))))
    for R in rotations:
        qvec, tvec = pose_to_colmap(R, [0.1, 0.2, 0.3])
        assert abs(np.linalg.norm(qvec) - 1) < 1e-15 and qvec[0] >= 0
        R2, _ = pose_from_colmap(qvec, tvec)
        np.testing.assert_allclose(R2, R, rtol=0, atol=1e-12)
        xyzw = pycolmap.Rotation3d(R).quat
        np.testing.assert_allclose(qvec, xyzw[[3, 0, 1, 2]] * np.sign(xyzw[3] or 1.0), atol=1e-12)


def test_transforms_from_other_tools_top_level_intrinsics():
    cam = random_rig(n=1)["cam00"]
    frame = cameras_to_transforms({"x": cam})["frames"][0]
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2", "k3", "camera_model")
    shared = {k: frame.pop(k) for k in keys}
    frame.pop("camera_id")
    frame["file_path"] = "./images/cam07.png"
    cameras = transforms_to_cameras({"frames": [frame], **shared})
    assert_same_cameras({"cam07": cam}, cameras)


# --- bad input ---------------------------------------------------------------------


def test_full_opencv_with_rational_term_is_rejected(tmp_path):
    rec = pycolmap.Reconstruction()
    params = [800, 800, 320, 240, 0.1, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0]
    camera = pycolmap.Camera(camera_id=1, model="FULL_OPENCV", width=640, height=480, params=params)
    rec.add_camera_with_trivial_rig(camera)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="cam00.png", camera_id=1, image_id=1), pycolmap.Rigid3d())
    (tmp_path / "m").mkdir()
    rec.write_text(str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"cam00\.png.*k4, k5, k6"):
        read_colmap_model(tmp_path / "m")


@pytest.mark.parametrize(
    "model, params, message",
    [
        ("OPENCV_FISHEYE", [800, 800, 320, 240, 0, 0, 0, 0], "not supported"),
        ("OPENCV", [800, 800, 320, 240], "takes 8 params"),
    ],
)
def test_unsupported_or_malformed_colmap_camera(model, params, message):
    with pytest.raises(ValueError, match=message):
        intrinsics_from_colmap(model, params)


@pytest.mark.parametrize("key", ["fl_x", "transform_matrix", "w"])
def test_transforms_missing_required_key(key):
    data = cameras_to_transforms(random_rig(n=2))
    del data["frames"][1][key]
    with pytest.raises(ValueError, match=rf"frame 1 \('cam01'\).*{key!r} is missing"):
        transforms_to_cameras(data)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.update(k4=0.01), "k4"),
        (lambda f: f.update(camera_model="OPENCV_FISHEYE"), "camera_model"),
        (lambda f: f["transform_matrix"].__setitem__(3, [0, 0, 1, 1]), "last row"),
        (lambda f: f.update(w=640.5), "whole number"),
    ],
)
def test_transforms_bad_frame(edit, message):
    data = cameras_to_transforms(random_rig(n=1))
    edit(data["frames"][0])
    with pytest.raises(ValueError, match=message):
        transforms_to_cameras(data)


def test_transforms_not_a_document():
    with pytest.raises(ValueError, match="'frames' list"):
        transforms_to_cameras({"frames": {}})


def test_bad_write_inputs_leave_no_model(tmp_path):
    cameras = random_rig(n=2)
    points = random_points(n=5)
    with pytest.raises(ValueError, match="aligned with points3d"):
        write_colmap_model(cameras, tmp_path / "m", points, {"cam00": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="not in cameras"):
        write_colmap_model(cameras, tmp_path / "m", points, {"camXX": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="need points3d"):
        write_colmap_model(cameras, tmp_path / "m", None, {"cam00": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="whitespace"):
        write_colmap_model({"cam 00": cameras["cam00"]}, tmp_path / "m")
    with pytest.raises(ValueError, match="image_paths has no entry"):
        cameras_to_transforms(cameras, {"cam00": "a.png"})
    assert list(tmp_path.iterdir()) == []


def test_read_colmap_model_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_colmap_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot read a COLMAP model"):
        read_colmap_model(tmp_path / "empty")


def test_camera_id_from_image_name():
    assert camera_id_from_image_name("cam03.png") == "cam03"
    assert camera_id_from_image_name("cam03.JPEG") == "cam03"
    assert camera_id_from_image_name("cam03") == "cam03"
    assert camera_id_from_image_name("rig.v2") == "rig.v2"
