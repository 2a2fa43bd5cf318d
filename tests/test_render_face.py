"""The simulated rig, subjects and face renderer, checked against mediapipe FaceMesh.

FaceMesh returns a face even where its landmarks are wrong, so a view counts only
if its landmarks agree with the projected ground truth: median error below 4 % of
the view's outer-eye-corner distance in each of the nine frontal views, and 3 %
on average over them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from capture_schema.layout import DEFAULT_CAMERAS
from capture_simulator.rig import camera_angles, default_rig, frontal_cameras
from capture_simulator.render_face import landmark_visibility, project_landmarks, render_view
from capture_simulator.subjects import neutral_subject, sample_subject
from fitting.face_models.builtin import builtin_face_model, builtin_texture
from fitting.face_models.linear import LinearFaceModel

SIZE = 512
VIEW_NME_MAX = 0.04
MEAN_NME_MAX = 0.03


@pytest.fixture(scope="module")
def model() -> LinearFaceModel:
    return builtin_face_model(np.float64)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return builtin_texture()


@pytest.fixture(scope="module")
def rig():
    return default_rig(SIZE, seed=0)


@pytest.fixture(scope="module")
def face_mesh():
    mp = pytest.importorskip("mediapipe")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        yield fm


# --- rig -------------------------------------------------------------------------

def test_rig_has_thirteen_cameras_aimed_at_the_head(rig) -> None:
    assert tuple(rig) == DEFAULT_CAMERAS
    origin = np.zeros((1, 3))
    for name, cam in rig.items():
        assert cam.width == cam.height == SIZE
        assert cam.depth(origin)[0] > 0, name
        assert np.linalg.norm(cam.project(origin)[0] - [(SIZE - 1) / 2] * 2) < 15, name
        assert 0.95 < np.linalg.norm(cam.center) < 1.05, name
        assert 2.0 * SIZE < cam.fx < 2.3 * SIZE and abs(cam.fy / cam.fx - 1) < 0.01
        assert abs(cam.cx - (SIZE - 1) / 2) < 6 and abs(cam.cy - (SIZE - 1) / 2) < 6
        assert -0.28 <= cam.dist[0] <= -0.12 and abs(cam.dist[2]) < 3e-3 and cam.dist[4] == 0.0  # a real barrel lens


def test_rig_geometry_follows_the_names(rig) -> None:
    for name, cam in rig.items():
        azimuth, elevation = camera_angles(name)
        c = cam.center
        assert (c[0] > 0.3 if azimuth > 0 else c[0] < -0.3 if azimuth < 0 else abs(c[0]) < 0.03), name  # L: +x
        assert c[2] < 0, name  # in front of the face, which looks towards -z
        if elevation > 0:
            assert c[1] < -0.2, name  # y is down: "up" cameras have negative y
        if elevation < 0:
            assert c[1] > 0.2, name
    assert frontal_cameras() == tuple(n for n in DEFAULT_CAMERAS if "60" not in n)
    assert len(frontal_cameras()) == 9


def test_rig_is_deterministic_per_seed() -> None:
    a, b, c = default_rig(256, seed=3), default_rig(256, seed=3), default_rig(256, seed=4)
    assert all(a[n].to_dict() == b[n].to_dict() for n in DEFAULT_CAMERAS)
    assert any(a[n].to_dict() != c[n].to_dict() for n in DEFAULT_CAMERAS)


# --- subjects ------------------------------------------------------------------------

def test_subjects_are_deterministic_and_distinct(model: LinearFaceModel, texture: np.ndarray) -> None:
    a = sample_subject(np.random.default_rng(11), model)
    b = sample_subject(np.random.default_rng(11), model)
    c = sample_subject(np.random.default_rng(12), model)
    assert np.array_equal(a.identity, b.identity) and a.tint == b.tint
    assert np.abs(a.identity - c.identity).max() > 0.1
    assert np.abs(a.recolor(texture) - c.recolor(texture)).mean() > 0.01


# --- rendering --------------------------------------------------------------------

def test_render_is_deterministic_and_shows_a_face(model, texture, rig) -> None:
    subject = neutral_subject(model)
    expr = model.expression_preset("neutral")
    cam = rig["mid_C00"]
    first = render_view(model, texture, subject, expr, None, None, cam)
    assert first.shape == (SIZE, SIZE, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_view(model, texture, subject, expr, None, None, cam))
    corner = first[:20, :20].reshape(-1, 3).astype(float)
    assert corner.std(axis=0).max() < 3 and 150 < corner.mean() < 230  # plain light-grey studio
    centre = first[SIZE // 2 - 40: SIZE // 2 + 40, SIZE // 2 - 40: SIZE // 2 + 40].astype(float)
    assert np.abs(centre - corner.mean(axis=0)).mean() > 20
    small = render_view(model, texture, subject, expr, None, None, default_rig(256)["mid_C00"], supersample=1)
    assert small.shape == (256, 256, 3)


def test_render_changes_with_subject_expression_and_pose(model, texture, rig) -> None:
    cam = rig["mid_L30"]
    neutral = model.expression_preset("neutral")
    base = render_view(model, texture, neutral_subject(model), neutral, None, None, cam).astype(float)
    other = sample_subject(np.random.default_rng(1), model)
    assert np.abs(render_view(model, texture, other, neutral, None, None, cam) - base).mean() > 2
    smile = render_view(model, texture, neutral_subject(model), model.expression_preset("smile"), None, None, cam)
    assert np.abs(smile - base).mean() > 0.3
    turned = render_view(model, texture, neutral_subject(model), neutral,
                         Rotation.from_euler("y", 15, degrees=True).as_matrix(), None, cam)
    assert np.abs(turned - base).mean() > 2


def test_open_mouth_renders_dark(model, texture, rig) -> None:
    subject, cam = neutral_subject(model), rig["mid_C00"]
    expr = model.expression_preset("mouth_open")
    image = render_view(model, texture, subject, expr, None, None, cam)
    lm = project_landmarks(model, subject, expr, None, None, cam)
    x, y = np.round(0.5 * (lm[13] + lm[14])).astype(int)  # between the inner lips
    assert image[y - 1: y + 2, x - 1: x + 2].mean() < 60
    closed = render_view(model, texture, subject, model.expression_preset("neutral"), None, None, cam)
    x, y = np.round(project_landmarks(model, subject, None, None, None, cam)[13]).astype(int)
    assert closed[y, x].mean() > 90


def test_landmark_visibility_hides_the_far_side(model, rig) -> None:
    subject, expr = neutral_subject(model), model.expression_preset("neutral")
    front = landmark_visibility(model, subject, expr, None, None, rig["mid_C00"])
    assert front[[1, 33, 263, 13, 152]].all() and front.mean() > 0.9
    left = landmark_visibility(model, subject, expr, None, None, rig["mid_L60"])
    assert left[454] and not left[234]  # the camera on the subject's left sees the left cheek only


def test_project_landmarks_applies_the_head_pose(model, rig) -> None:
    subject = sample_subject(np.random.default_rng(5), model)
    R, t = Rotation.from_euler("xyz", [5, -10, 3], degrees=True).as_matrix(), np.array([0.01, 0.0, -0.02])
    expr = model.expression_preset("surprise")
    cam = rig["up_R30"]
    expected = cam.project(model.vertices(subject.identity, expr, R, t))
    assert np.allclose(project_landmarks(model, subject, expr, R, t, cam), expected)


# --- agreement with mediapipe -------------------------------------------------------

CASES = [
    pytest.param(None, "neutral", None, id="template-neutral"),
    pytest.param(1, "neutral", None, id="subject1-neutral"),
    pytest.param(None, "mouth_open", None, id="template-mouth_open"),
    pytest.param(1, "disgust", None, id="subject1-disgust"),
    pytest.param(3, "neutral", (-2.0, 3.0, 1.5), id="subject3-neutral-posed"),
]


@pytest.mark.parametrize("seed, expression, pose_deg", CASES)
def test_mediapipe_agrees_with_ground_truth_in_frontal_views(model, texture, rig, face_mesh,
                                                            seed, expression, pose_deg) -> None:
    subject = neutral_subject(model) if seed is None else sample_subject(np.random.default_rng(seed), model)
    expr = model.expression_preset(expression)
    R = None if pose_deg is None else Rotation.from_euler("xyz", pose_deg, degrees=True).as_matrix()
    t = None if pose_deg is None else np.array([0.005, -0.004, 0.01])
    nme = {}
    for name in frontal_cameras():
        cam = rig[name]
        result = face_mesh.process(render_view(model, texture, subject, expr, R, t, cam))
        assert result.multi_face_landmarks, f"no face found in {name}"
        found = np.array([[p.x, p.y] for p in result.multi_face_landmarks[0].landmark]) * SIZE - 0.5
        truth = project_landmarks(model, subject, expr, R, t, cam)
        nme[name] = np.median(np.linalg.norm(found - truth, axis=1)) / np.linalg.norm(truth[33] - truth[263])
    worst = max(nme, key=nme.get)
    assert nme[worst] < VIEW_NME_MAX, f"{worst}: median error {100 * nme[worst]:.1f} % of the eye-corner distance"
    assert np.mean(list(nme.values())) < MEAN_NME_MAX, nme
