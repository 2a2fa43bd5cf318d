"""The one camera model (numpy, torch, undistortion, Rodrigues) held against OpenCV and scipy.

The lens is a strong real-world one (k1 = -0.25 plus k2, p1, p2, k3), so a sign error
in k1 or swapped p1 / p2 moves points near the corners by many pixels, and the
points cover the whole frame, corners included.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from capture_schema.cameras import Camera, project_points
from capture_simulator.rig import default_rig
from fitting.camera_model import CameraBatch, axis_angle_to_matrix, undistort_normalized
from training.prior.frames import CropWindow, crop_camera_rays

WIDTH, HEIGHT = 640, 480
DIST = (-0.25, 0.12, 1.5e-3, -2.5e-3, -0.03)


def _camera(dist=DIST) -> Camera:
    R = Rotation.from_rotvec([0.1, -0.3, 0.05]).as_matrix()
    return Camera(WIDTH, HEIGHT, fx=520.0, fy=515.0, cx=322.0, cy=236.0, dist=dist, R=R, t=np.array([0.02, -0.01, 1.2]))


def _full_frame_points(cam: Camera, n: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """World points whose images cover the whole frame, corners included, and the grid they were made from."""
    u, v = np.meshgrid(np.linspace(0, WIDTH - 1, n), np.linspace(0, HEIGHT - 1, n))
    pixels = np.stack([u.ravel(), v.ravel()], axis=1)
    # Any inverse will do (the truth is cv2.projectPoints of these points): the points only need to spread.
    normalised = cv2.undistortPoints(pixels.reshape(-1, 1, 2), cam.K, np.array(cam.dist), R=None, P=None,
                                     criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14))
    normalised = normalised.reshape(-1, 2)
    depth = np.random.default_rng(seed).uniform(0.5, 2.0, len(normalised))
    in_camera = np.concatenate([normalised, np.ones((len(normalised), 1))], axis=1) * depth[:, None]
    world = (in_camera - cam.t) @ cam.R  # R^T (X - t), row-wise
    return world, pixels


def _opencv(cam: Camera, world: np.ndarray) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(cam.R)
    pix, _ = cv2.projectPoints(world.reshape(-1, 1, 3), rvec, cam.t, cam.K, np.array(cam.dist))
    return pix.reshape(-1, 2)


def test_the_lens_moves_corner_points_by_many_pixels() -> None:
    """The yardstick can fail: with this lens a flipped k1 or swapped p1/p2 misplaces corners grossly."""
    cam = _camera()
    world, _ = _full_frame_points(cam)
    truth = _opencv(cam, world)
    k1, k2, p1, p2, k3 = DIST
    for wrong in ((-k1, k2, p1, p2, k3), (k1, k2, p2, p1, k3)):
        moved = np.linalg.norm(_opencv(_camera(wrong), world) - truth, axis=1).max()
        assert moved > 5.0, wrong


def test_numpy_projection_matches_opencv_over_the_full_frame() -> None:
    cam = _camera()
    world, _ = _full_frame_points(cam)
    truth = _opencv(cam, world)
    np.testing.assert_allclose(cam.project(world), truth, atol=1e-8)
    np.testing.assert_allclose(project_points(world, cam.K, cam.dist, cam.R, cam.t), truth, atol=1e-8)
    # four coefficients mean k3 = 0, as in OpenCV
    four = project_points(world, cam.K, cam.dist[:4], cam.R, cam.t)
    np.testing.assert_allclose(four, _opencv(_camera(DIST[:4] + (0.0,)), world), atol=1e-8)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_torch_projection_matches_opencv_in_every_camera(dtype: torch.dtype, atol: float) -> None:
    cams = [_camera(), _camera((0.1, -0.05, -1e-3, 2e-3, 0.0))]
    world, _ = _full_frame_points(cams[0])
    batch = CameraBatch.from_cameras(cams, dtype=dtype)
    pix, depth = batch.project(torch.as_tensor(world, dtype=dtype)[None, :, :])
    for c, cam in enumerate(cams):
        np.testing.assert_allclose(pix[c].double().numpy(), _opencv(cam, world), atol=atol)
        np.testing.assert_allclose(depth[c].double().numpy(), cam.depth(world), rtol=1e-6)


def test_torch_projection_has_opencv_jacobian() -> None:
    """Gradients flow through distortion: compare with cv2.projectPoints' analytic Jacobian w.r.t. the point."""
    cam = _camera()
    world, _ = _full_frame_points(cam, n=5)
    batch = CameraBatch.from_cameras([cam])
    rvec, _ = cv2.Rodrigues(cam.R)
    for point in world[[0, 12, 24]]:  # a corner, the centre, the other corner
        jac = torch.autograd.functional.jacobian(lambda p: batch.project(p[None, None, :])[0].reshape(2),
                                                 torch.tensor(point))
        # d pixel / d tvec == d pixel / d point for a world-to-camera translation with R applied first
        _, cv_jac = cv2.projectPoints(point.reshape(1, 1, 3), rvec, cam.t, cam.K, np.array(cam.dist))
        d_dt = cv_jac[:, 3:6]
        np.testing.assert_allclose(jac.numpy(), d_dt @ cam.R, rtol=1e-6, atol=1e-6)


def test_undistortion_inverts_opencv_projection_at_the_corners() -> None:
    cam = _camera()
    world, _ = _full_frame_points(cam)
    pixels = _opencv(cam, world)
    pixels[7] = np.nan
    in_camera = world @ cam.R.T + cam.t
    expected = in_camera[:, :2] / in_camera[:, 2:]
    got = undistort_normalized(pixels, cam.K, cam.dist)
    assert np.isnan(got[7]).all()
    ok = np.arange(len(pixels)) != 7
    np.testing.assert_allclose(got[ok], expected[ok], atol=1e-9)
    # OpenCV's default (5 iterations) leaves the corners of this lens off by hundredths of a pixel
    # (0.036 px measured), 1e5 times the explicit criterion's error: the criterion matters.
    default = cv2.undistortPoints(pixels[ok].reshape(-1, 1, 2), cam.K, np.array(cam.dist)).reshape(-1, 2)
    assert np.abs(default - expected[ok]).max() * cam.fx > 0.01
    with pytest.raises(ValueError, match="N, 2"):
        undistort_normalized(pixels[:, :1], cam.K, cam.dist)


def test_prior_crop_rays_point_at_the_pixels_they_belong_to() -> None:
    """Every crop pixel's ray, projected back through the lens with OpenCV, lands on that pixel."""
    cam = _camera()
    window = CropWindow(scale=0.25, offset=(0.0, 0.0), size=48)  # the crop covers the whole 640 x 480 frame
    dirs = crop_camera_rays(window, cam.K, np.array(cam.dist)).reshape(-1, 3).astype(np.float64)
    grid = np.stack(np.meshgrid(np.arange(48.0), np.arange(48.0)), axis=-1).reshape(-1, 2)
    image_xy = window.to_image(grid)
    inside = (image_xy[:, 0] < WIDTH) & (image_xy[:, 1] < HEIGHT)
    pix, _ = cv2.projectPoints(dirs[inside].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, np.array(cam.dist))
    assert np.abs(pix.reshape(-1, 2) - image_xy[inside]).max() < 1e-3  # float32 rays


def test_axis_angle_matches_scipy_including_tiny_angles() -> None:
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(6, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rotvecs = axes * np.array([0.0, 1e-7, 1e-4, 0.5, 2.0, 3.1])[:, None]
    ours = axis_angle_to_matrix(torch.tensor(rotvecs)).numpy()
    assert np.allclose(ours, Rotation.from_rotvec(rotvecs).as_matrix(), atol=1e-14)
    ours32 = axis_angle_to_matrix(torch.tensor(rotvecs, dtype=torch.float32)).double().numpy()
    assert np.allclose(ours32, Rotation.from_rotvec(rotvecs).as_matrix(), atol=1e-6)
    # and against OpenCV's Rodrigues, batched over a leading dimension
    batch = rng.normal(size=(2, 4, 3))
    out = axis_angle_to_matrix(torch.tensor(batch)).numpy()
    for index in np.ndindex(2, 4):
        np.testing.assert_allclose(out[index], cv2.Rodrigues(batch[index])[0], atol=1e-12)


def test_axis_angle_gradient_is_finite_and_exact_at_zero() -> None:
    rng = np.random.default_rng(0)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.zeros(3, dtype=torch.float64))
    skew = [np.cross(np.eye(3), e) for e in np.eye(3)]  # skew(e) @ v == e x v
    assert np.allclose(jac.numpy(), np.stack(skew, axis=-1), atol=1e-15)
    # Just inside the series branch: dR/dr_i = S_i + (S_i K + K S_i) / 2 + O(theta^2).
    r = 1e-5 * axis
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.tensor(r)).numpy()
    k = sum(ri * si for ri, si in zip(r, skew))
    expected = np.stack([s + (s @ k + k @ s) / 2 for s in skew], axis=-1)
    assert np.allclose(jac, expected, rtol=0, atol=1e-9)


def test_simulated_rig_has_a_real_lens() -> None:
    """The simulator's lenses are strong enough that calibration and fit bars notice a wrong sign."""
    for size in (384, 512):
        rig = default_rig(size=size, seed=3)
        for cam in rig.values():
            k1, k2, p1, p2, k3 = cam.dist
            assert -0.3 <= k1 <= -0.1 and 0.0 <= k2 <= 0.2 and k3 == 0.0
            corner = np.array([[0.0, 0.0], [size - 1.0, size - 1.0]])
            flipped = Camera(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, (-k1, k2, p1, p2, k3))
            straight = undistort_normalized(corner, cam.K, cam.dist)
            shift = flipped.project(np.concatenate([straight, np.ones((2, 1))], axis=1)) - corner
            assert np.linalg.norm(shift, axis=1).min() > 3.0 * size / 512
