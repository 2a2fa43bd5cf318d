"""Face landmarks with real mediapipe FaceMesh: single images, whole sessions, the zarr store, the summary table.

Bars come from measuring 1,014 simulated views at 512 px (see ``fitting.landmarks.detect``):
frontal nine views err 1.8-3.0 px on average (per-view median, worst 5.1 px), and
no view over 10 px off got confidence above 0.5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from capture_schema.tables import LANDMARK_SUMMARY_SCHEMA
from fitting.landmarks.detect import (
    DETECTOR_NAME,
    N_LANDMARKS,
    FaceMeshDetector,
    LandmarkInputError,
    SessionLandmarks,
    detect_image_file,
    detect_session,
    landmark_summary_table,
)
from fitting.landmarks.store import LandmarkStoreError, read_landmarks_zarr, write_landmarks_zarr

FRONTAL_MEDIAN_PX = 3.0  # median over the session's frontal views (measured 2.2)
FRONTAL_WORST_PX = 6.0  # any frontal view (measured worst 5.1 over 702 views)


@pytest.fixture(scope="module")
def detector():
    with FaceMeshDetector() as d:
        yield d


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def session_dir(sim_dataset) -> Path:
    return sim_dataset.captures_root / sim_dataset.session_ids[0]


@pytest.fixture(scope="module")
def truth(sim_dataset) -> np.ndarray:
    sid = sim_dataset.session_ids[0]
    return np.load(sim_dataset.ground_truth_root / sid / "landmarks_2d.npz")["landmarks"]


@pytest.fixture(scope="module")
def inline(session_dir) -> SessionLandmarks:
    return detect_session(session_dir, workers=1)


def _errors(result: SessionLandmarks, truth: np.ndarray) -> np.ndarray:
    """Per-view median landmark error in pixels, (E, C)."""
    return np.median(np.linalg.norm(result.landmarks - truth, axis=-1), axis=-1)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- single images ---------------------------------------------------------------------

def test_astronaut_face_is_found_with_plausible_landmarks(detector, astronaut) -> None:
    found = detector.detect(astronaut)
    h, w = astronaut.shape[:2]
    assert found.detected and found.image_size == (w, h)
    assert found.landmarks.shape == (N_LANDMARKS, 2) and found.landmarks.dtype == np.float32
    assert np.isfinite(found.landmarks).all()
    assert (found.landmarks >= 0).all() and (found.landmarks[:, 0] <= w - 1).all() and (found.landmarks[:, 1] <= h - 1).all()
    assert found.confidence > 0.5 and 0 <= found.mirror_nme < 0.03
    right_eye, left_eye = found.landmarks[33], found.landmarks[263]  # subject's right eye is on image-left
    assert right_eye[0] < left_eye[0]
    assert 40 < np.linalg.norm(left_eye - right_eye) < 90 and abs(left_eye[1] - right_eye[1]) < 15
    assert found.landmarks[1, 1] > right_eye[1] and found.landmarks[152, 1] > found.landmarks[1, 1]  # nose, chin below


def test_single_pass_is_unverified_and_close_to_the_cross_checked_result(detector, astronaut) -> None:
    with FaceMeshDetector(mirror=False) as single:
        one = single.detect(astronaut)
    both = detector.detect(astronaut)
    assert one.detected and one.confidence == 1.0 and np.isnan(one.mirror_nme)
    assert np.median(np.linalg.norm(one.landmarks - both.landmarks, axis=1)) < 1.5  # half the passes' gap (~0.3 px)


def test_detection_commutes_with_mirroring_the_image(detector, astronaut) -> None:
    """Mirrored back (x -> (w - 1) - x, ids through the mirror table) the result on the flipped image is the same."""
    from fitting.face_models.builtin import builtin_face_model

    w = astronaut.shape[1]
    plain, flipped = detector.detect(astronaut), detector.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    back = flipped.landmarks.copy()
    back[:, 0] = (w - 1) - back[:, 0]
    assert np.abs(back[builtin_face_model(np.float64).mirror] - plain.landmarks).max() < 1e-3
    assert flipped.mirror_nme == pytest.approx(plain.mirror_nme, rel=1e-6)


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_gives_nan_and_zero_confidence(detector, kind) -> None:
    image = (np.full((480, 640, 3), 128, np.uint8) if kind == "blank"
             else np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    found = detector.detect(image)
    assert not found.detected and found.confidence == 0.0 and np.isnan(found.mirror_nme)
    assert found.landmarks.shape == (N_LANDMARKS, 2) and np.isnan(found.landmarks).all()
    assert found.image_size == (640, 480)


def test_wrong_image_arrays_are_refused(detector) -> None:
    with pytest.raises(LandmarkInputError, match="RGB uint8"):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(LandmarkInputError, match="RGB uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))


def test_image_file_is_read_as_rgb(detector, astronaut, tmp_path) -> None:
    path = tmp_path / "astronaut.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    from_file = detect_image_file(path, detector)
    from_array = detector.detect(astronaut)
    assert from_file.detected and np.array_equal(from_file.landmarks, from_array.landmarks)
    assert from_file.confidence == from_array.confidence


def test_unreadable_image_files_get_a_clear_error(tmp_path) -> None:
    with pytest.raises(LandmarkInputError, match="not found"):
        detect_image_file(tmp_path / "absent.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(LandmarkInputError, match="cannot decode"):
        detect_image_file(broken)


# --- sessions --------------------------------------------------------------------------

def test_session_grid_shapes_and_order(inline, session_dir) -> None:
    info = json.loads((session_dir / "session.json").read_text())
    assert inline.session_id == info["session_id"]
    assert inline.expressions == tuple(info["expressions"]) and inline.cameras == tuple(info["cameras"])
    e, c = len(inline.expressions), len(inline.cameras)
    assert inline.landmarks.shape == (e, c, N_LANDMARKS, 2) and inline.landmarks.dtype == np.float32
    assert inline.detected.shape == (e, c) and inline.detected.dtype == bool
    # Every view up to 30 degrees is found; at 60 degrees mediapipe may miss an off-span face now
    # and then (measured: 1 of 52 such views on the suite's first subject, none on the second).
    wide = np.array(["60" in cam for cam in inline.cameras])
    assert inline.detected[:, ~wide].all() and inline.detected[:, wide].mean() > 0.9
    assert inline.confidence.dtype == inline.mirror_nme.dtype == np.float32
    assert inline.image_size.dtype == np.int32 and (inline.image_size == 512).all()
    assert inline.mirror and inline.detector == DETECTOR_NAME


def test_worker_pool_gives_exactly_the_inline_result(inline, session_dir) -> None:
    calls: list[tuple[int, int]] = []
    pooled = detect_session(session_dir, workers=2, progress=lambda done, total: calls.append((done, total)))
    assert pooled.equals(inline)
    assert calls[-1] == (169, 169) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_frontal_views_agree_with_the_ground_truth(inline, truth) -> None:
    errors = _errors(inline, truth)
    frontal = np.array(["60" not in cam for cam in inline.cameras])
    assert np.median(errors[:, frontal]) < FRONTAL_MEDIAN_PX, errors[:, frontal]
    assert errors[:, frontal].max() < FRONTAL_WORST_PX, errors[:, frontal]
    assert np.mean(inline.confidence[:, frontal] > 0.5) > 0.9


def test_confidence_separates_good_from_bad_views(inline, truth) -> None:
    errors = _errors(inline, truth)
    assert (errors > 8).any(), "the 60-degree views should include some poor fits"
    assert (inline.confidence[errors > 10] < 0.5).all()
    assert np.median(inline.confidence[errors < 3]) > 0.8 > np.median(inline.confidence[errors > 6])


def test_averaging_with_the_mirrored_pass_reduces_the_error(inline, truth, session_dir) -> None:
    single = detect_session(session_dir, workers=1, mirror=False)
    assert not single.mirror and (single.confidence[single.detected] == 1.0).all()
    assert np.isnan(single.mirror_nme).all()
    assert np.nanmean(_errors(inline, truth)) < np.nanmean(_errors(single, truth))


def test_missing_and_corrupt_images_are_reported_not_detected(inline, session_copy) -> None:
    (session_copy / "images" / "smile" / "mid_L30.jpg").unlink()
    (session_copy / "images" / "pucker" / "up_C00.jpg").write_bytes(b"\xff\xd8 broken")
    damaged = detect_session(session_copy, workers=1)
    for expression, camera in [("smile", "mid_L30"), ("pucker", "up_C00")]:
        i, j = damaged.expressions.index(expression), damaged.cameras.index(camera)
        assert not damaged.detected[i, j] and damaged.confidence[i, j] == 0
        assert np.isnan(damaged.landmarks[i, j]).all() and (damaged.image_size[i, j] == 0).all()
    assert damaged.detected.sum() == inline.detected.sum() - 2
    keep = damaged.detected
    assert np.array_equal(damaged.landmarks[keep], inline.landmarks[keep])

    table = landmark_summary_table(damaged)
    assert table.num_rows == 169 and table.schema.equals(LANDMARK_SUMMARY_SCHEMA, check_metadata=True)
    rows = table.to_pylist()
    missing = next(r for r in rows if r["expression"] == "smile" and r["camera_id"] == "mid_L30")
    assert not missing["detected"] and missing["n_landmarks"] == 0 and np.isnan(missing["bbox_x0"])
    assert np.isnan(missing["eye_distance_px"])


def test_not_a_session_gets_a_clear_error(tmp_path) -> None:
    with pytest.raises(LandmarkInputError, match="session.json"):
        detect_session(tmp_path)


# --- zarr store and summary table ----------------------------------------------------------

def test_zarr_round_trip_is_exact_and_deterministic(inline, tmp_path) -> None:
    out = tmp_path / "out"
    write_landmarks_zarr(inline, out / "a.zarr")
    write_landmarks_zarr(inline, out / "b.zarr")
    first = _tree(out / "a.zarr")
    assert first and first == _tree(out / "b.zarr")
    write_landmarks_zarr(inline, out / "a.zarr")  # replacing an existing store
    assert _tree(out / "a.zarr") == first
    assert sorted(p.name for p in out.iterdir()) == ["a.zarr", "b.zarr"]  # no temp or old folders left
    back = read_landmarks_zarr(out / "a.zarr")
    assert back.equals(inline)
    attrs = json.loads((out / "a.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["session_id"] == inline.session_id and attrs["cameras"] == list(inline.cameras)
    assert attrs["detector"] == DETECTOR_NAME and attrs["mirror"] is True and "opencv" in attrs["pixel_convention"]


def test_zarr_round_trip_keeps_nan_cells(inline, tmp_path) -> None:
    holes = SessionLandmarks(inline.session_id, inline.expressions, inline.cameras, inline.landmarks.copy(),
                             inline.detected.copy(), inline.confidence.copy(), inline.mirror_nme.copy(),
                             inline.image_size.copy(), mirror=inline.mirror)
    holes.landmarks[2] = np.nan  # a whole expression row without a face: a chunk equal to the fill value
    holes.detected[2] = False
    write_landmarks_zarr(holes, tmp_path / "holes.zarr")
    assert read_landmarks_zarr(tmp_path / "holes.zarr").equals(holes)
    assert not read_landmarks_zarr(tmp_path / "holes.zarr").equals(inline)


def test_reading_something_else_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(LandmarkStoreError, match="no landmark store"):
        read_landmarks_zarr(tmp_path)
    (tmp_path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(LandmarkStoreError, match="not a landmark store"):
        read_landmarks_zarr(tmp_path)


def test_summary_table_has_one_row_per_image(inline) -> None:
    table = landmark_summary_table(inline)
    assert isinstance(table, pa.Table) and table.num_rows == 169
    assert table.schema.equals(LANDMARK_SUMMARY_SCHEMA, check_metadata=True)
    keys = list(zip(table["expression"].to_pylist(), table["camera_id"].to_pylist()))
    assert keys == sorted(keys) and len(set(keys)) == 169
    row = table.to_pylist()[keys.index(("neutral", "mid_C00"))]
    i, j = inline.expressions.index("neutral"), inline.cameras.index("mid_C00")
    pts = inline.landmarks[i, j]
    assert row["detected"] and row["n_landmarks"] == N_LANDMARKS
    assert row["bbox_x0"] == pytest.approx(pts[:, 0].min()) and row["bbox_y1"] == pytest.approx(pts[:, 1].max())
    assert row["eye_distance_px"] == pytest.approx(float(np.linalg.norm(pts[33] - pts[263])), rel=1e-5)
    assert row["confidence"] == pytest.approx(float(inline.confidence[i, j]))
