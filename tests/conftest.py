"""Shared fixtures: one small simulated capture set per test run, copied before breaking it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    import numpy as np

SIM_SIZE = 512
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _reference_data_message(path: Path, what: str) -> str:
    return f"{what} not found at {path}"


def need_reference_data(path: Path, what: str) -> None:
    """Skip a test whose reference data ``path`` is absent on this machine; in CI (``CI`` set), fail instead.

    The shared reference data (``../shared/data``) is read in place and never copied into
    the repo; a developer machine may lack it, but a CI run that silently skips it tests less.
    """
    if path.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{_reference_data_message(path, what)}; CI is set, so reference data must be present",
                    pytrace=False)
    pytest.skip(_reference_data_message(path, what))


def needs_reference_data(path: Path, what: str) -> pytest.MarkDecorator:
    """The mark form of ``need_reference_data`` (for tests and fixture params): skip, or fail in CI."""
    if path.exists():
        return pytest.mark.reference_data
    if os.environ.get("CI"):
        return pytest.mark.reference_data(missing=str(path), what=what)
    return pytest.mark.skip(reason=_reference_data_message(path, what))


#: Fixtures that cost tens of seconds to minutes (simulating, rendering boards, calibrating, fitting,
#: training): every test that uses one, directly or through another fixture, is marked ``slow`` and
#: left out of ``make test-fast``. ``sim`` is test_calibration's rendered board captures.
HEAVY_FIXTURES = frozenset({"sim_dataset", "sim_landmarks", "prior_pipeline", "trained_prior", "sim", "s3_store"})


#: How ``make test`` spreads the suite over its two pytest-xdist workers (``--dist loadgroup``), in the
#: order the units are handed out. The 12-subject pipeline and the trained prior are built once per run
#: and shared by both workers (``build_once``). The first worker takes the chain pipeline -> prior ->
#: few-shot; the other runs the 2-subject group and the board calibration tests (about as long as the
#: pipeline takes to build, measured), then the modules in ``SECOND_WORKER``: the ablations need only
#: the pipeline, the prior's quality tests start once the chain has trained it. Every other test stays
#: with its module, so module fixtures are built once too.
PRIOR_CHAIN, SIM_GROUP = "prior_chain", "sim_dataset"
SECOND_WORKER = {"test_ablation_assets.py": "ablation", "test_prior_quality.py": "prior_quality",
                 "test_object_storage.py": "scale_out", "test_daemon.py": "scale_out",
                 "test_distributed.py": "scale_out", "test_export.py": "export"}
_UNIT_ORDER = (PRIOR_CHAIN, SIM_GROUP, "tests/test_calibration.py", *SECOND_WORKER.values())


def _xdist_group(item: pytest.Item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    module = item.nodeid.split("::")[0]
    if "prior_pipeline" in names:
        return SECOND_WORKER.get(module.rsplit("/", 1)[-1], PRIOR_CHAIN)
    return SIM_GROUP if "sim_dataset" in names else module


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: hand out units in _UNIT_ORDER, not by size
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouped = config.pluginmanager.hasplugin("xdist")  # registers the mark; only --dist loadgroup reads it
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if grouped:
            item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))
    if grouped:
        rank = {group: i for i, group in enumerate(_UNIT_ORDER)}
        items.sort(key=lambda item: rank.get(_xdist_group(item), len(rank)))  # stable: file order within


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, on the controller, with each worker's node ids
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Stop a distributed run whose groups did not take (each worker would build every shared fixture)."""
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in nodeid for nodeid in ids):
        pytest.exit("pytest-xdist --dist loadgroup did not group the tests (pytest 9.2 breaks it: "
                    "pytest-dev/pytest-xdist#1386); install pytest<9.2 or run without -n", returncode=4)


def _share_the_cores() -> None:
    """Under xdist, torch runs on one thread per worker: two workers on two cores, no spinning threads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]) -> dict:
    """``build(folder)`` once per test run, even when pytest-xdist runs the tests in several processes.

    Without xdist this is ``build`` in a fresh temporary folder. Under xdist the first worker to
    ask builds in a folder of the run's base temp (shared by the workers) while the others wait on
    a file lock, then all read the JSON the builder left; a failed build fails every asker with its
    error instead of being rebuilt. ``build`` returns plain JSON values.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    done, failed = shared / f"{name}.json", shared / f"{name}.failed"
    with FileLock(str(shared / f"{name}.lock")):
        if failed.exists():
            pytest.fail(f"building {name} failed on another worker: {failed.read_text()}", pytrace=False)
        if not done.exists():
            try:
                value = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
            except BaseException as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}"[:4000])
                raise
            done.write_text(json.dumps(value))
        return json.loads(done.read_text())


def pytest_runtest_setup(item: pytest.Item) -> None:
    _share_the_cores()
    for mark in item.iter_markers("reference_data"):
        if "missing" in mark.kwargs:
            need_reference_data(Path(mark.kwargs["missing"]), mark.kwargs["what"])


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory):
    """Two simulated subjects at 512 px (the size the board and the face detector need), 10 board poses."""
    from capture_simulator.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("sim"), n_subjects=2, size=SIM_SIZE, seed=7, n_board_poses=10)


@pytest.fixture()
def session_copy(sim_dataset, tmp_path: Path) -> Path:
    """A private copy of the first simulated session, safe to break."""
    src = sim_dataset.captures_root / sim_dataset.session_ids[0]
    dst = tmp_path / "captures" / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file (and link target) below root, to prove nothing was touched."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def sim_landmarks(sim_dataset):
    """mediapipe landmarks of the first simulated session (detected once per test run)."""
    from fitting.landmarks.detect import detect_session

    return detect_session(sim_dataset.captures_root / sim_dataset.session_ids[0], workers=2)


def sim_ground_truth(sim_dataset, index: int = 0) -> dict:
    """The simulator's truth for one session: cameras, 2D landmarks, the drawn mesh (posed per frame
    and neutral, built-in topology) and the truth model's per-frame parameters."""
    import json

    import numpy as np

    from capture_schema.calibration_file import read_calibration

    gt = sim_dataset.ground_truth_root / sim_dataset.session_ids[index]
    frames = json.loads((gt / "frames.json").read_text())
    with np.load(gt / "landmarks_2d.npz") as data:
        landmarks = data["landmarks"].astype(np.float64)
    with np.load(gt / "mesh_3d.npz") as data:
        vertices, neutral = data["vertices"].astype(np.float64), data["neutral"].astype(np.float64)
    return {"calibration": read_calibration(gt / "calibration.json"), "landmarks_2d": landmarks,
            "vertices": vertices, "neutral": neutral, "face_model": frames["face_model"],
            "identity": np.asarray(frames["identity_coeffs"]), "frames": frames["frames"]}


#: How far (mean px over every landmark of every view) a session fit may land from the truth
#: beyond the model's own floor (``best_in_span``): a fit pools 150+ views of a detector that errs
#: ~3 px on off-span faces (benchmarks/offspan_noise.py), so its error must stay close to the floor.
FIT_OVER_FLOOR_PX = 1.5


def best_in_span(model, truth: dict) -> np.ndarray:
    """The model's least-squares approximation of the true meshes, posed (E, N, 3).

    Each true mesh is taken to the model frame with the true head pose, then one linear solve
    fits a shared identity, a per-frame expression and a per-frame linearised rigid motion plus
    scale (which absorbs what the pose cannot) to all frames at once."""
    import numpy as np

    poses = [(np.asarray(f["head_rotation"]), np.asarray(f["head_translation"])) for f in truth["frames"]]
    local = np.stack([(v - t) @ R for v, (R, t) in zip(truth["vertices"], poses)])
    template = model.template.astype(np.float64)
    centred = template - template.mean(0)
    rigid = [np.broadcast_to(np.eye(3)[k], centred.shape) for k in range(3)]
    rigid += [np.cross(np.eye(3)[k], centred) for k in range(3)] + [centred]
    identity = model.identity_basis.reshape(len(model.identity_basis), -1).T.astype(np.float64)
    per_frame = np.concatenate([model.expression_basis.reshape(len(model.expression_basis), -1).T,
                                np.stack(rigid).reshape(7, -1).T], axis=1).astype(np.float64)
    n_frames, rows, n_id, n_pf = len(local), identity.shape[0], identity.shape[1], per_frame.shape[1]
    design = np.zeros((n_frames * rows, n_id + n_frames * n_pf))
    for e in range(n_frames):
        design[e * rows:(e + 1) * rows, :n_id] = identity
        design[e * rows:(e + 1) * rows, n_id + e * n_pf:n_id + (e + 1) * n_pf] = per_frame
    coef, *_ = np.linalg.lstsq(design, (local - template).reshape(-1), rcond=None)
    best_local = template + (design @ coef).reshape(local.shape)
    return np.stack([x @ R.T + t for x, (R, t) in zip(best_local, poses)])



def mean_reprojection_px(truth: dict, vertices) -> float:
    """Mean distance (px) of posed meshes (E, 478, 3) projected through the true cameras from the
    true 2D landmarks, over every landmark of every view."""
    import numpy as np

    cams = list(truth["calibration"].cameras.values())
    projected = np.stack([np.stack([cam.project(v) for cam in cams]) for v in vertices])
    return float(np.linalg.norm(projected - truth["landmarks_2d"], axis=-1).mean())


PRIOR_SUBJECTS = 12  # the split rule puts 10 in train, sim0008 in validation and sim0011 in test
PRIOR_SIZE = 384  # the smallest size at which the simulated board still calibrates every camera


def _run_prior_pipeline(root: Path) -> dict:
    import dagster as dg

    from capture_schema import derived_layout as layout
    from capture_simulator.simulate import simulate_dataset
    from pipelines.resources import CapturesResource, StorageResource
    from pipelines.partitions import SESSIONS_PARTITION
    from pipelines.runner import build_dataset_index, run_all_sessions

    sim = simulate_dataset(root / "sim", n_subjects=PRIOR_SUBJECTS, size=PRIOR_SIZE, seed=11)
    captures, storage = CapturesResource(root=str(sim.captures_root)), StorageResource(url=f"file://{root}/derived")
    instance = dg.DagsterInstance.ephemeral()
    runs = run_all_sessions(instance, captures, storage, log_level="WARNING", log=lambda _: None)
    assert all(r.success and not r.failed_checks for r in runs), runs
    assert build_dataset_index(instance, storage, log_level="WARNING", log=lambda _: None)
    return {"captures": str(sim.captures_root), "storage": storage.url, "index": str(root / "derived" / layout.INDEX),
            "ground_truth": str(sim.ground_truth_root),
            "sessions": instance.get_dynamic_partitions(SESSIONS_PARTITION)}


@pytest.fixture(scope="session")
def prior_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 simulated subjects at 384 px taken through every session asset and the dataset index.

    Built once per test run (``build_once``). The avatar-prior tests train on its ``train``
    split (10 subjects x 169 images). Returns the captures root, the storage URL, the index
    path, the session partition keys and a Dagster instance of this worker's own that holds them.
    """
    import dagster as dg

    from pipelines.partitions import SESSIONS_PARTITION

    built = build_once(tmp_path_factory, "prior_sim", _run_prior_pipeline)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SESSIONS_PARTITION, built["sessions"])
    return {**built, "captures": Path(built["captures"]), "index": Path(built["index"]),
            "ground_truth": Path(built["ground_truth"]), "instance": instance}


@pytest.fixture(scope="session")
def trained_prior(prior_pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ``avatar_prior`` asset materialised ONCE per test run, default cpu preset, on ``prior_pipeline``.

    Trains on the 10 train subjects into ``<storage root>/prior/anchored/``. Returns the
    checkpoint path, the materialisation's metadata (plain values) and the storage root.
    Tests may read the checkpoint; never write under that ``prior/`` folder (train
    elsewhere, with tiny overrides).
    """
    def train(_: Path) -> dict:
        import dagster as dg

        from pipelines.assets.prior import avatar_prior
        from pipelines.resources import FaceModelResource, StorageResource

        result = dg.materialize([avatar_prior], instance=prior_pipeline["instance"], raise_on_error=False,
                                resources={"storage": StorageResource(url=prior_pipeline["storage"]),
                                           "face_model": FaceModelResource()})
        assert result.success, [e.step_failure_data for e in result.get_step_failure_events()]
        materialisation = result.asset_materializations_for_node("avatar_prior")[0]
        return {k: v.value for k, v in materialisation.metadata.items()}

    metadata = build_once(tmp_path_factory, "trained_prior", train)
    return {"checkpoint": Path(metadata["checkpoint"]), "metadata": metadata,
            "storage_root": Path(prior_pipeline["storage"][len("file://"):])}


def assert_ground_truth_is_the_source_model(out: Path, source, n_identity: int) -> None:
    """What ``o2a simulate OUT`` wrote for its first subject is ``source``'s truth model: the identity
    has ``n_identity`` coefficients, each frame's expression is the source's preset, and the stored
    2D landmarks are that model's posed landmarks projected through the true cameras."""
    import json

    import numpy as np

    from capture_schema.calibration_file import read_calibration

    gt = next((out / "ground_truth").iterdir())
    frames = json.loads((gt / "frames.json").read_text())
    assert frames["face_model"] == source.model.name
    identity = np.asarray(frames["identity_coeffs"])
    assert identity.shape == (n_identity,)
    landmarks = np.load(gt / "landmarks_2d.npz")["landmarks"]
    cams = list(read_calibration(gt / "calibration.json").cameras.values())
    for e, frame in enumerate(frames["frames"][:3]):
        coeffs = np.asarray(frame["expression_coeffs"])
        assert np.allclose(coeffs, source.expression_coeffs(frame["expression"]))
        posed = source.model.vertices(identity, coeffs, np.asarray(frame["head_rotation"]),
                                      np.asarray(frame["head_translation"]))
        lm = source.model.landmark_embedding.points(posed)
        for c in (0, 6):
            assert np.abs(cams[c].project(lm) - landmarks[e, c, :len(lm)]).max() < 1e-3


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real S3-compatible server (SeaweedFS) on loopback with a bucket ``o2a``, for this test session.

    Sets the environment s3fs reads (``AWS_ENDPOINT_URL``, keys, region), as a deployment would,
    so ``s3://o2a/...`` URLs work in this process and in every process it starts.
    """
    from services import S3_ENV, make_bucket, seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        try:
            make_bucket(endpoint, "o2a")
            yield {"endpoint": endpoint, "bucket": "s3://o2a"}
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
