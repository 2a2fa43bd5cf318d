"""``o2a`` on bad input and failing disks: exit 1 (or 2) with a message naming the file, never a traceback.

Calibration runs on OpenCV's stereo chessboard sample in ``tests/data`` (2 cameras x 13
images, ~2 s). Write failures are real, not mocked: the CLI runs in a subprocess under
a file-size limit (``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, so writes fail with EFBIG),
and permission errors use an unprivileged effective uid when the tests run as root
(root ignores permission bits, so ``chmod 000`` alone proves nothing there).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from capture_schema import derived_layout as layout
from conftest import need_reference_data

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
STEREO = ROOT / "tests" / "data" / "opencv_stereo_chessboard"
NOBODY = 65534


def _need_stereo() -> None:
    need_reference_data(STEREO, "real reference data (copied from the shared data into tests/data)")


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _run_limited(argv: list[str], max_file_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m pipelines.cli argv`` where no file may grow past ``max_file_bytes`` (EFBIG, not SIGXFSZ)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=cwd, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


@pytest.fixture
def shared_dir():
    """A temporary folder an unprivileged uid can traverse (pytest's tmp_path is root-only when run as root)."""
    path = Path(tempfile.mkdtemp(prefix="o2a-cli-errors-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):  # give back what the test locked, so it can be removed
        with contextlib.suppress(OSError):
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _unprivileged():
    """Permission bits apply inside: as root, the effective uid becomes ``nobody`` (restored after)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(NOBODY)
    except OSError as exc:
        pytest.skip(f"running as root and cannot drop to uid {NOBODY} ({exc}): permission bits cannot be tested")
    try:
        yield
    finally:
        os.seteuid(0)


def _stereo_copy(dst: Path, n_images: int | None = None) -> Path:
    """The stereo sample (board.json + left/ + right/); ``n_images`` keeps the first few moments (faster)."""
    _need_stereo()
    shutil.copytree(STEREO, dst)
    if n_images is not None:
        for cam in ("left", "right"):
            for path in sorted((dst / cam).iterdir())[n_images:]:
                path.unlink()
    return dst


# ---------------------------------------------------------------- calibration input


def test_calibrate_unreadable_camera_and_calibration_folders(capsys, shared_dir: Path) -> None:
    # Every module the command imports is loaded before the uid drops (the interpreter lives under /root).
    import fitting.calibration  # noqa: F401
    import tqdm  # noqa: F401

    calib = _stereo_copy(shared_dir / "calib")
    (calib / "right").chmod(0)
    with _unprivileged():
        code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(shared_dir / "out")])
    assert code == 1 and "o2a calibrate:" in err
    assert "'right'" in err and str(calib / "right") in err and "Permission denied" in err, err

    (calib / "right").chmod(0o755)
    calib.chmod(0o311)  # listable no more, but board.json still reachable
    with _unprivileged():
        code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(shared_dir / "out")])
    assert code == 1 and f"cannot read calibration folder '{calib}'" in err, err

    calib.chmod(0)  # not even board.json can be reached
    with _unprivileged():
        code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(shared_dir / "out")])
    assert code == 1 and str(calib) in err and "Permission denied" in err, err
    assert not (shared_dir / "out").exists()


def test_calibrate_camera_folder_that_is_a_file(capsys, tmp_path: Path) -> None:
    calib = _stereo_copy(tmp_path / "calib")
    shutil.rmtree(calib / "right")
    (calib / "right").write_bytes(b"not a folder")
    code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(tmp_path / "out"), "--cameras", "left,right"])
    assert code == 1 and f"camera 'right': '{calib / 'right'}' is not a folder" in err, err
    code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(tmp_path / "out"), "--cameras", "left,cam9"])
    assert code == 1 and "camera 'cam9' has no folder" in err, err
    assert not (tmp_path / "out").exists()


def test_calibrate_empty_camera_folder_is_named_not_dropped(capsys, tmp_path: Path) -> None:
    calib = _stereo_copy(tmp_path / "calib", n_images=5)
    (calib / "middle").mkdir()
    (calib / "middle" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    for extra in ([], ["--cameras", "left,middle,right"]):
        code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(out), *extra])
        assert code == 1, err
        assert "camera 'middle'" in err and str(calib / "middle") in err and "holds no board images" in err, err
        assert not out.exists()
    # Naming the cameras explicitly leaves the empty folder out, knowingly.
    code, stdout, err = _run(capsys, ["calibrate", str(calib), "--out", str(out), "--cameras", "left,right"])
    assert code == 0, err
    assert json.loads((out / layout.CALIBRATION_FILE).read_text())["cameras"].keys() == {"left", "right"}


def test_calibrate_corrupt_board_image_is_reported_by_name(capsys, tmp_path: Path) -> None:
    calib = _stereo_copy(tmp_path / "calib", n_images=5)
    (calib / "left" / "000.png").write_bytes(np.random.default_rng(0).bytes(3000))
    (calib / "right" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # a PNG cut short
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, ["calibrate", str(calib), "--out", str(out)])
    assert code == 0, err
    assert "board found in 5/6 images" in stdout
    report = json.loads((out / layout.CALIBRATION_REPORT_FILE).read_text())
    for cam in ("left", "right"):
        detection = report["cameras"][cam]["detection"]
        assert detection["n_unreadable"] == 1
        assert detection["skipped"]["000.png"].startswith("unreadable ("), detection["skipped"]


def test_image_reader_refusal_becomes_a_skip(monkeypatch, tmp_path: Path) -> None:
    """Whatever the image reader raises (ValueError for a refused file, OSError) is a skipped image, not a crash."""
    from fitting.calibration import detect

    calib = _stereo_copy(tmp_path / "calib", n_images=5)
    real = detect._read_gray

    def refusing(path: Path):
        if path.name == "03.jpg":
            raise ValueError(f"{path}: refused (hostile header)")
        if path.name == "04.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(detect, "_read_gray", refusing)
    found = detect.detect_folder(calib, ["left"])
    skipped = found.cameras["left"].skipped
    assert skipped["03.jpg"].startswith("unreadable (") and "refused (hostile header)" in skipped["03.jpg"]
    assert skipped["04.jpg"] == "unreadable (Permission denied)"
    assert found.cameras["left"].n_detected == 3 and found.cameras["left"].n_unreadable == 2


# ---------------------------------------------------------------- output that cannot be written


def test_calibrate_out_is_an_existing_file(capsys, tmp_path: Path) -> None:
    _need_stereo()
    out = tmp_path / "out.json"
    out.write_text("keep me")
    code, _, err = _run(capsys, ["calibrate", str(STEREO), "--out", str(out)])
    assert code == 1 and err.strip() == f"o2a calibrate: cannot write {out}: it exists and is not a folder"
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("argv", [["simulate", "{out}", "--subjects", "1", "--size", "64", "--quiet"],
                                  ["fit", "{dir}", "--calibration", "{dir}/c.json", "--out", "{out}"],
                                  ["landmarks", "{dir}", "--out", "{out}"]])
def test_out_is_an_existing_file(capsys, tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "taken"
    out.write_text("keep me")
    argv = [a.format(out=out, dir=tmp_path) for a in argv]
    code, _, err = _run(capsys, argv)
    assert code == 1 and err.strip() == f"o2a {argv[0]}: cannot write {out}: it exists and is not a folder", err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("limit", [1000, 2000])
def test_calibrate_file_size_limit(tmp_path: Path, limit: int) -> None:
    """1000 B stops calibration.json (Python's write fails); 2000 B only the COLMAP text files,
    whose pycolmap writer truncates silently: the read-back check must catch that."""
    calib = _stereo_copy(tmp_path / "calib", n_images=5)
    out = tmp_path / "out"
    proc = _run_limited(["calibrate", str(calib), "--out", str(out)], limit, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"o2a calibrate: cannot write {out}"), proc.stderr
    expected = "File too large" if limit == 1000 else "written incompletely"
    assert expected in proc.stderr, proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))  # nothing half-written, no temp left


def test_simulate_file_size_limit_names_the_file(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    proc = _run_limited(["simulate", str(out), "--subjects", "1", "--size", "64", "--quiet"], 1000, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"o2a simulate: cannot write {out}/") and line.endswith(": File too large"), line
    written = Path(line.removeprefix("o2a simulate: cannot write ").removesuffix(": File too large"))
    assert written.suffix in (".jpg", ".png", ".json") and ".tmp" not in written.name, line


def test_unwritable_output_folder(capsys, shared_dir: Path) -> None:
    calib = _stereo_copy(shared_dir / "calib", n_images=4)
    assert main(["calibrate", str(calib), "--out", str(shared_dir / "warm")]) == 0  # load every lazy import
    capsys.readouterr()
    locked = shared_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with _unprivileged():
        code, _, err = _run(capsys, ["calibrate", str(calib), "--out", str(locked / "out")])
    assert code == 1, err
    assert err.strip() == f"o2a calibrate: cannot write {locked / 'out'}: Permission denied", err


# ---------------------------------------------------------------- face-model files


def _write_calibration(path: Path) -> Path:
    from capture_schema.calibration_file import Calibration, write_calibration
    from capture_schema.cameras import Camera

    write_calibration(path, Calibration({"cam": Camera(64, 64, 80.0, 80.0, 32.0, 32.0)}))
    return path


def _flame_like() -> dict:
    rng = np.random.default_rng(1)
    return {"v_template": rng.normal(size=(30, 3)), "f": rng.integers(0, 30, size=(20, 3)),
            "shapedirs": rng.normal(size=(30, 3, 400))}


def _bad_flame_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    whole = pickle.dumps(_flame_like(), protocol=2)
    files = {"empty.pkl": b"", "garbage.pkl": np.random.default_rng(2).bytes(500),
             "truncated.pkl": whole[: len(whole) // 2], "text.pkl": b"hello, I am not a model\n" * 4,
             "list.pkl": pickle.dumps([1, 2, 3])}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_flame_loader_refuses_empty_truncated_and_garbage_files(tmp_path: Path) -> None:
    from fitting.face_models import load_face_model

    for name, path in _bad_flame_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            load_face_model("flame", path)
        assert str(path) in str(err.value), (name, err.value)
    good = tmp_path / "model.pkl"
    good.write_bytes(pickle.dumps(_flame_like()))
    with pytest.raises(ValueError, match="missing key 'posedirs'"):
        load_face_model("flame", good)
    for content in (b"", b"PK\x03\x04 not really a zip", np.random.default_rng(3).bytes(300)):
        emb = tmp_path / "embedding.npz"
        emb.write_bytes(content)
        from fitting.face_models.flame import load_mediapipe_embedding

        with pytest.raises(ValueError) as err:
            load_mediapipe_embedding(emb, np.zeros((4, 3), np.int64))
        assert str(emb) in str(err.value)


def _broken_ict_dir(folder: Path, kind: str) -> Path:
    from fitting.face_models import ict

    folder.mkdir(parents=True)
    names = [ict.TOPOLOGY_FILE, ict.EXPRESSION_FILE] + [name for name, _, _ in ict.IDENTITY_FILES]
    for name in names:
        if kind == "empty":
            (folder / name).write_bytes(b"")
        elif kind == "garbage":
            (folder / name).write_bytes(np.random.default_rng(4).bytes(700))
        elif kind == "truncated":
            np.savez(folder / name, v_template=np.zeros((50, 3), np.float32))
            (folder / name).write_bytes((folder / name).read_bytes()[:200])
        elif kind == "missing_keys":
            np.savez(folder / name, something_else=np.zeros(3))
        elif kind == "text_values":
            np.savez(folder / name, v_template=np.array([["a", "b", "c"]]), faces=np.zeros((1, 4), int),
                     region_ranges=np.zeros((1, 2), int), region_names=np.array(["face"]),
                     landmarks_multipie68=np.zeros(68, int))
    return folder / ict.TOPOLOGY_FILE


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "missing_keys", "text_values"])
def test_ict_loader_refuses_broken_npz_files(tmp_path: Path, kind: str) -> None:
    from fitting.face_models import load_face_model

    topology = _broken_ict_dir(tmp_path / "ict", kind)
    with pytest.raises(ValueError) as err:
        load_face_model("ict", topology.parent)
    assert topology.name in str(err.value), err.value
    if kind == "missing_keys":
        assert "v_template" in str(err.value) and str(topology) in str(err.value)


def test_fit_with_broken_model_files_fails_before_detecting(capsys, tmp_path: Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    calibration = _write_calibration(tmp_path / "calibration.json")
    out = tmp_path / "out"
    runs = [["--model", "flame", "--model-path", str(path)] for path in _bad_flame_files(tmp_path / "flame").values()]
    runs += [["--model", "flame", "--model-path", str(tmp_path / "missing.pkl")]]
    for kind in ("empty", "garbage"):
        runs.append(["--model", "ict", "--model-path", str(_broken_ict_dir(tmp_path / f"ict_{kind}", kind).parent)])
    for extra in runs:
        code, _, err = _run(capsys, ["fit", str(session), "--calibration", str(calibration), "--out", str(out), *extra])
        assert code == 1 and err.startswith("o2a fit: "), err
        assert extra[-1] in err, err  # the file, or the ICT folder within the broken file's path
        assert not out.exists()  # nothing detected, nothing written


# ---------------------------------------------------------------- prior checkpoints


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    import torch

    from training.prior.checkpoint import CHECKPOINT_FORMAT

    folder.mkdir(parents=True, exist_ok=True)
    arch = {"config": {}, "n_subjects": 1, "n_expression": 3, "anchor_ids": [0, 1]}
    files = {
        "no_architecture.pt": {"format": CHECKPOINT_FORMAT, "model": {}, "subjects": ["s"], "optimizer": {},
                               "step": 1, "positions": [[0, 0]], "history": [], "train_seconds": 1.0},
        "no_step.pt": {"format": CHECKPOINT_FORMAT, "architecture": arch, "model": {}, "subjects": ["s"]},
        "no_anchor_ids.pt": {"format": CHECKPOINT_FORMAT, "architecture": {"config": {}, "n_subjects": 1,
                                                                          "n_expression": 3},
                             "model": {}, "subjects": ["s"], "fewshot": {}},
        "wrong_weights.pt": {"format": CHECKPOINT_FORMAT, "architecture": arch, "subjects": ["s"], "fewshot": {},
                             "model": {"w": torch.zeros(2)}},
        "foreign.pt": {"model": {"w": torch.zeros(2)}},
        "list.pt": [torch.zeros(2)],
    }
    paths = {}
    for name, payload in files.items():
        torch.save(payload, folder / name)
        paths[name] = folder / name
    whole = (folder / "no_step.pt").read_bytes()
    for name, data in (("empty.pt", b""), ("random.pt", np.random.default_rng(5).bytes(4000)),
                       ("truncated.pt", whole[: len(whole) // 2])):
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def test_checkpoint_loaders_raise_checkpoint_error_naming_file_and_key(tmp_path: Path) -> None:
    from training.prior.checkpoint import CheckpointError, load_checkpoint, load_prior

    expected = {"no_architecture.pt": "'architecture'", "no_step.pt": "'step'",
                "no_anchor_ids.pt": "'architecture.anchor_ids'", "wrong_weights.pt": "cannot rebuild",
                "foreign.pt": "expected format", "list.pt": "list", "empty.pt": "empty",
                "random.pt": "not a loadable", "truncated.pt": "not a loadable"}
    for name, path in _bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_prior(path)
        assert str(path) in str(err.value) and expected[name] in str(err.value), (name, err.value)
        if name != "wrong_weights.pt":  # the others fail before any model is built
            with pytest.raises(CheckpointError):
                load_checkpoint(path)


def test_prior_eval_with_bad_checkpoints(capsys, tmp_path: Path) -> None:
    index = tmp_path / "index.parquet"  # never reached: the checkpoint is checked first
    for name, path in _bad_checkpoints(tmp_path).items():
        code, _, err = _run(capsys, ["prior", "eval", "--checkpoint", str(path), "--index", str(index)])
        assert code == 1 and err.startswith(f"o2a prior eval: {path}"), (name, err)
        if name == "no_architecture.pt":
            assert "missing key(s) 'architecture'" in err, err
    code, _, err = _run(capsys, ["prior", "eval", "--checkpoint", str(tmp_path / "nothing.pt"), "--index", str(index)])
    assert code == 2 and "no checkpoint at" in err
