"""``o2a import-calibration`` and sessions that use a calibration made elsewhere.

Real files and real pycolmap throughout: rigs written by the project's own writers (COLMAP
text, COLMAP binary, transforms.json) import back equal, bad input gets its own error and
exit code, and a simulated session pointed at an imported calibration.json validates and
materialises ``session_manifest`` and ``camera_calibration`` with the imported cameras.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from capture_schema import derived_layout as layout
from capture_schema.calibration_file import Calibration, read_calibration, write_calibration
from capture_schema.calibration_import import (
    CameraNotInCalibrationError,
    DuplicateCameraIdError,
    EmptyCalibrationError,
    ImportSourceMissingError,
    UnknownCalibrationFormatError,
    UnsupportedCameraModelError,
    import_calibration,
    imported_format,
)
from capture_schema.cameras import Camera
from capture_schema.converters import read_transforms, write_colmap_model, write_transforms
from capture_schema.problems import ProblemCode
from capture_schema.storage import Storage
from capture_schema.validation import validate_session
from capture_simulator.rig import default_rig
from pipelines.cli import main

TOL = 1e-6


@pytest.fixture(scope="module")
def rig() -> dict[str, Camera]:
    """Thirteen cameras with every kind of value the converters carry: k3 = 0 (COLMAP OPENCV) and
    k3 != 0 (FULL_OPENCV), a non-square image, poses all round the head."""
    cams = default_rig(size=640, seed=5)
    cams["up_C00"] = dataclasses.replace(cams["up_C00"], dist=(-0.11, 0.09, 0.0004, -0.0003, 0.021))
    cams["low_R30"] = dataclasses.replace(cams["low_R30"], height=480, cy=241.5)
    return cams


def assert_same_cameras(got: dict[str, Camera], want: dict[str, Camera]) -> None:
    """Equal ids and order, and K, dist, R, t and sizes within 1e-6, compared with numpy."""
    assert list(got) == list(want)
    for cam_id, cam in want.items():
        other = got[cam_id]
        assert (other.width, other.height) == (cam.width, cam.height), cam_id
        np.testing.assert_allclose(other.K, cam.K, atol=TOL, rtol=0, err_msg=cam_id)
        np.testing.assert_allclose(np.asarray(other.dist), np.asarray(cam.dist), atol=TOL, rtol=0, err_msg=cam_id)
        np.testing.assert_allclose(other.R, cam.R, atol=TOL, rtol=0, err_msg=cam_id)
        np.testing.assert_allclose(other.t, cam.t, atol=TOL, rtol=0, err_msg=cam_id)


def _colmap_text(rig: dict, tmp: Path) -> tuple[Path, str]:
    return write_colmap_model(rig, tmp / "text"), "colmap_text"


def _colmap_binary(rig: dict, tmp: Path) -> tuple[Path, str]:
    return write_colmap_model(rig, tmp / "binary", binary=True), "colmap_binary"


def _colmap_converted(rig: dict, tmp: Path) -> tuple[Path, str]:
    """A text model converted to binary by pycolmap itself, inside a COLMAP project (``sparse/0``)."""
    import pycolmap

    (tmp / "project" / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(write_colmap_model(rig, tmp / "text"))).write_binary(
        str(tmp / "project" / "sparse" / "0"))
    return tmp / "project", "colmap_binary"


def _transforms(rig: dict, tmp: Path) -> tuple[Path, str]:
    return write_transforms(tmp / "transforms.json", rig), "transforms_json"


def _colmap_without_points(rig: dict, tmp: Path) -> tuple[Path, str]:
    """A hand-made model: cameras.txt + images.txt only (pycolmap itself needs a points3D file)."""
    model = write_colmap_model(rig, tmp / "text")
    for name in ("points3D.txt", "rigs.txt", "frames.txt"):
        (model / name).unlink()
    return model, "colmap_text"


SOURCES = [_colmap_text, _colmap_binary, _colmap_converted, _transforms, _colmap_without_points]


@pytest.mark.parametrize("write", SOURCES, ids=[f.__name__.strip("_") for f in SOURCES])
def test_written_rig_imports_back_equal(rig, tmp_path: Path, write) -> None:
    src, fmt = write(rig, tmp_path)
    calibration = import_calibration(src)
    assert_same_cameras(calibration.cameras, rig)
    assert imported_format(calibration) == fmt and calibration.source == f"imported:{fmt}"
    assert calibration.rmse_px == 0.0 and set(calibration.n_observations.values()) == {0}


def test_imported_calibration_json_round_trips_and_board_files_are_unchanged(rig, tmp_path: Path) -> None:
    imported = import_calibration(write_colmap_model(rig, tmp_path / "m"))
    write_calibration(tmp_path / "c.json", imported)
    back = read_calibration(tmp_path / "c.json")
    assert back.source == "imported:colmap_text"
    assert_same_cameras(back.cameras, rig)
    # A calibration without a source (every board calibration) writes no "source" key at all.
    plain = Calibration(rig, 0.2, {c: 0.2 for c in rig}, {c: 10 for c in rig})
    assert "source" not in plain.to_dict() and list(plain.to_dict()) == ["rmse_px", "cameras"]
    bad = dict(imported.to_dict(), source=["x"])
    with pytest.raises(ValueError, match="source"):
        Calibration.from_dict(bad)


def test_cameras_restrict_and_reorder(rig, tmp_path: Path) -> None:
    model = write_colmap_model(rig, tmp_path / "m", binary=True)
    chosen = ["low_R30", "mid_C00", "up_L60"]
    calibration = import_calibration(model, chosen)
    assert_same_cameras(calibration.cameras, {c: rig[c] for c in chosen})
    with pytest.raises(CameraNotInCalibrationError, match="'cam99'") as exc:
        import_calibration(model, ["mid_C00", "cam99"])
    assert exc.value.missing == ("cam99",)


def _fisheye_text_model(rig: dict, tmp: Path, model: str = "OPENCV_FISHEYE") -> Path:
    """A text model whose first camera is a fisheye (same parameter count as OPENCV: k1 k2 k3 k4)."""
    folder = write_colmap_model({k: rig[k] for k in ("mid_C00", "mid_L30")}, tmp / "fisheye")
    lines = (folder / "cameras.txt").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("1 "))
    fields = lines[i].split()
    if model == "SIMPLE_RADIAL_FISHEYE":  # f cx cy k
        fields = fields[:4] + [fields[4], fields[6], fields[7], fields[8]]
    lines[i] = " ".join([fields[0], model] + fields[2:])
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_errors_say_what_is_wrong(rig, tmp_path: Path) -> None:
    with pytest.raises(ImportSourceMissingError, match="does not exist"):
        import_calibration(tmp_path / "nowhere")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UnknownCalibrationFormatError, match="without a COLMAP model"):
        import_calibration(tmp_path / "empty_folder")
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01 not json at all")
    with pytest.raises(UnknownCalibrationFormatError, match="not a transforms.json"):
        import_calibration(tmp_path / "garbage.json")
    write_calibration(tmp_path / "calibration.json", Calibration(rig))
    with pytest.raises(UnknownCalibrationFormatError, match="calibration.json already"):
        import_calibration(tmp_path / "calibration.json")
    for model in ("OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE"):
        with pytest.raises(UnsupportedCameraModelError, match=model):
            import_calibration(_fisheye_text_model(rig, tmp_path, model))
    data = json.loads(write_transforms(tmp_path / "t.json", rig).read_text())
    data["frames"][2]["camera_model"] = "OPENCV_FISHEYE"
    (tmp_path / "fisheye.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedCameraModelError, match="mid_R30"):
        import_calibration(tmp_path / "fisheye.json")
    data["frames"][2] = dict(data["frames"][0])
    (tmp_path / "twice.json").write_text(json.dumps(data))
    with pytest.raises(DuplicateCameraIdError, match="mid_C00"):
        import_calibration(tmp_path / "twice.json")
    # Two COLMAP images whose file names give one camera id.
    twice = write_colmap_model({"a/mid_C00": rig["mid_C00"], "b/mid_C00": rig["mid_L30"]}, tmp_path / "dup")
    with pytest.raises(DuplicateCameraIdError, match="two images for camera 'mid_C00'"):
        import_calibration(twice)
    (tmp_path / "no_frames.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(EmptyCalibrationError):
        import_calibration(tmp_path / "no_frames.json")
    (tmp_path / "empty_model").mkdir()
    for name in ("cameras", "images", "points3D"):
        (tmp_path / "empty_model" / f"{name}.txt").write_text("# nothing\n")
    with pytest.raises(EmptyCalibrationError, match="no registered image"):
        import_calibration(tmp_path / "empty_model")
    broken = write_colmap_model(rig, tmp_path / "broken", binary=True)
    (broken / "cameras.bin").write_bytes(b"\xff" * 40)
    with pytest.raises(ValueError, match="cannot read the COLMAP binary model"):
        import_calibration(broken)


# --- the command ----------------------------------------------------------------------------


def test_cli_writes_calibration_and_says_what_it_imported(rig, tmp_path: Path, capsys) -> None:
    model = write_colmap_model(rig, tmp_path / "m", binary=True)
    out = tmp_path / "rig" / "calibration.json"
    assert main(["import-calibration", str(model), "--out", str(out), "--cameras", "low_R30,mid_C00"]) == 0
    printed = capsys.readouterr().out
    assert "2 camera(s)" in printed and "COLMAP binary model" in printed
    assert "low_R30: 640x480 px" in printed and "mid_C00: 640x640 px" in printed
    assert_same_cameras(read_calibration(out).cameras, {c: rig[c] for c in ("low_R30", "mid_C00")})


@pytest.mark.parametrize("case", ["missing path", "garbage file", "fisheye model", "camera missing"])
def test_cli_bad_input_exits_1_naming_it(rig, tmp_path: Path, capsys, case: str) -> None:
    cameras = []
    if case == "missing path":
        src, expect = tmp_path / "nowhere", "does not exist"
    elif case == "garbage file":
        src, expect = tmp_path / "transforms.json", "not a transforms.json"
        src.write_bytes(b"garbage {{{")
    elif case == "fisheye model":
        src, expect = _fisheye_text_model(rig, tmp_path, "SIMPLE_RADIAL_FISHEYE"), "SIMPLE_RADIAL_FISHEYE"
    else:
        src, expect = write_transforms(tmp_path / "t.json", rig), "no camera 'cam99'"
        cameras = ["--cameras", "mid_C00,cam99"]
    out = tmp_path / "out.json"
    assert main(["import-calibration", str(src), "--out", str(out), *cameras]) == 1
    err = capsys.readouterr().err
    assert err.startswith("o2a import-calibration: cannot import:") and expect in err and str(src) in err
    assert not out.exists()


def test_cli_usage_errors_exit_2(rig, tmp_path: Path, capsys) -> None:
    model = write_colmap_model(rig, tmp_path / "m")
    assert main(["import-calibration", str(model), "--out", str(tmp_path / "calibration")]) == 2
    assert "must name a .json file" in capsys.readouterr().err
    assert main(["import-calibration", str(model), "--out", str(tmp_path / "c.json"), "--cameras", "a,,b"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["import-calibration", str(model)])
    assert exc.value.code == 2


def test_console_script_prints_no_traceback(rig, tmp_path: Path) -> None:
    broken = write_colmap_model(rig, tmp_path / "m")
    (broken / "images.txt").write_text("1 2 3\nnot an image line at all\n")
    o2a = Path(sys.executable).parent / "o2a"
    proc = subprocess.run([str(o2a), "import-calibration", str(broken), "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "cannot read the COLMAP text model" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr


# --- sessions using an imported calibration ---------------------------------------------------


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory: pytest.TempPathFactory):
    """One simulated subject at 128 px (a few seconds): an imported calibration needs no board captures."""
    from capture_simulator.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("sim"), n_subjects=1, size=128, seed=3, n_board_poses=1)


def _session(small_sim, root: Path, session_id: str | None = None, calibration: str = "calibration.json") -> Path:
    """A copy of the simulated session under ``root`` without board captures, its session.json naming
    ``calibration`` (and ``session_id`` when given, for a second session of the same rig)."""
    src = small_sim.captures_root / small_sim.session_ids[0]
    dst = root / (session_id or src.name)
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "calibration")
    data = json.loads((dst / "session.json").read_text())
    data.update(calibration=calibration, session_id=dst.name)
    (dst / "session.json").write_text(json.dumps(data))
    return dst


def _truth(small_sim) -> dict[str, Camera]:
    return read_calibration(small_sim.ground_truth_root / small_sim.session_ids[0] / "calibration.json").cameras


def _materialize(root: Path, storage: Path, keys: list[str]) -> list:
    from pipelines.assets.calibration import camera_calibration
    from pipelines.assets.ingest import session_manifest
    from pipelines.partitions import SESSIONS_PARTITION
    from pipelines.resources import CapturesResource, StorageResource

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SESSIONS_PARTITION, keys)
    resources = {"captures": CapturesResource(root=str(root)), "storage": StorageResource(url=f"file://{storage}")}
    return [dg.materialize([session_manifest, camera_calibration], partition_key=key, instance=instance,
                           resources=resources, raise_on_error=False) for key in keys]


def test_sessions_share_an_imported_calibration(small_sim, tmp_path: Path, capsys) -> None:
    truth = _truth(small_sim)
    root = tmp_path / "captures"
    shared = "../rig_a/calibration.json"
    sessions = [_session(small_sim, root, calibration=shared), _session(small_sim, root, "sim0000_s02", shared)]
    # Imported from a COLMAP model written from the ground-truth cameras, as another tool would leave it.
    model = write_colmap_model(truth, tmp_path / "elsewhere" / "sparse" / "0", binary=True)
    assert main(["import-calibration", str(model.parent.parent), "--out", str(root / "rig_a" / "calibration.json")]) == 0
    capsys.readouterr()
    for session in sessions:
        report = validate_session(session)
        assert report.valid, report.problems
    from capture_schema.captures_root import CALIBRATION, SESSION, scan_captures_root

    assert [(e.name, e.kind) for e in scan_captures_root(root)] == [
        ("rig_a", CALIBRATION), ("sim0000_s01", SESSION), ("sim0000_s02", SESSION)]
    storage = tmp_path / "derived"
    results = _materialize(root, storage, [s.name for s in sessions])
    reused = []
    for result in results:
        assert result.success, [e.step_failure_data for e in result.get_step_failure_events()]
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks and all(checks.values()), checks
        mat = result.asset_materializations_for_node("camera_calibration")[0]
        assert mat.metadata["rmse_px"].value == 0.0
        reused.append(mat.metadata["reused"].value)
    assert reused == [False, True]
    from fitting.calibration.session import read_session_calibration, session_calibration_file

    store = Storage(f"file://{storage}")
    files = {session_calibration_file(store, s.name) for s in sessions}
    assert len(files) == 1
    stored = read_session_calibration(store, sessions[0].name)
    assert stored.source == "imported:colmap_binary"
    assert_same_cameras(stored.cameras, truth)
    folder = storage / Path(files.pop()).parent
    assert_same_cameras(read_transforms(folder / layout.TRANSFORMS_FILE), truth)
    from capture_schema.converters import read_colmap_model

    assert_same_cameras(read_colmap_model(folder / layout.COLMAP_DIR), truth)


def test_session_camera_order_decides_the_stored_order(small_sim, tmp_path: Path) -> None:
    """The calibration file may hold more cameras, in any order: the session's list wins."""
    from fitting.calibration.session import calibrate_session

    truth = _truth(small_sim)
    session = _session(small_sim, tmp_path / "captures")
    write_calibration(session / "calibration.json", import_calibration(write_transforms(
        tmp_path / "t.json", dict(reversed(list(truth.items()))))))
    made = calibrate_session(Storage(f"file://{tmp_path / 'derived'}"), session, session.name)
    assert made.calibration.source == "imported:transforms_json" and not made.reused
    assert_same_cameras(made.calibration.cameras, truth)


def _codes(session: Path) -> dict[ProblemCode, list[str]]:
    out: dict[ProblemCode, list[str]] = {}
    for problem in validate_session(session).problems:
        out.setdefault(problem.code, []).append(problem.message)
    return out


def test_validation_reports_an_unusable_calibration_file(small_sim, tmp_path: Path) -> None:
    from fitting.calibration.session import SessionCalibrationError, calibrate_session

    truth = _truth(small_sim)
    session = _session(small_sim, tmp_path / "captures")
    assert list(_codes(session)) == [ProblemCode.CALIBRATION_MISSING]
    (session / "calibration.json").write_text("{not json")
    assert list(_codes(session)) == [ProblemCode.CALIBRATION_FILE_INVALID]
    write_calibration(session / "calibration.json", Calibration({c: truth[c] for c in list(truth)[1:]}))
    codes = _codes(session)
    assert list(codes) == [ProblemCode.CALIBRATION_CAMERA_MISSING] and "'mid_C00'" in codes[
        ProblemCode.CALIBRATION_CAMERA_MISSING][0]
    with pytest.raises(SessionCalibrationError, match="'mid_C00'"):
        calibrate_session(Storage(f"file://{tmp_path / 'derived'}"), session, session.name)
    write_calibration(session / "calibration.json", Calibration(default_rig(size=256, seed=3)))
    codes = _codes(session)
    assert list(codes) == [ProblemCode.CALIBRATION_SIZE_MISMATCH] and len(codes[ProblemCode.CALIBRATION_SIZE_MISMATCH]) == 13
    assert "256x256 in the calibration but its images are 128x128" in codes[ProblemCode.CALIBRATION_SIZE_MISMATCH][0]
    data = json.loads((session / "session.json").read_text())
    (session / "session.json").write_text(json.dumps(dict(data, calibration="../../elsewhere.json")))
    assert ProblemCode.PATH_OUTSIDE_SESSION in _codes(session)
