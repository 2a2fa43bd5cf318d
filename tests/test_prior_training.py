"""Avatar-prior training: exact resume after a real kill, safe checkpoints, refusal to mix runs, DDP.

The training tests use the session's ``prior_pipeline`` data (10 training subjects)
with a tiny model and a handful of steps, so each training takes seconds. Every
training process runs one torch thread, so an interrupted-and-resumed run and an
uninterrupted one do bit-identical arithmetic and must end on identical weights.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fitting.face_models import load_face_model
from prior_ddp_script import state_digest
from training.loader import SampleFilter
from training.prior.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    load_prior,
)
from training.prior.config import PRESETS, PriorConfig, preset
from training.prior.dataset import prior_data_from_index
from training.prior.model import AvatarPrior
from training.prior.train import (
    MIN_LR_FRACTION,
    learning_rate_factor,
    sample_rays,
    step_generator,
    train_prior,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = Path(__file__).with_name("prior_train_script.py")
DDP_SCRIPT = Path(__file__).with_name("prior_ddp_script.py")
TINY = dict(iterations=6, checkpoint_every=2, log_every=2, rays_per_image=32, coarse_samples=8, fine_samples=4,
            images_per_batch=2, shuffle_buffer=20)
SUBPROCESS_TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class _OneThread:
    """torch.set_num_threads(1) for the block (the default is restored afterwards)."""

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.before)


def _history_without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), f"{name} differs"


def _assert_same_nested(a, b, where: str = "") -> None:
    """Equal plain data / tensors, recursively (optimizer state)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same_nested(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where




# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def face_model():
    return load_face_model("builtin", None, None)


@pytest.fixture(scope="module")
def prior_data(prior_pipeline):
    data = prior_data_from_index(prior_pipeline["index"])
    assert data.stats["subjects"] == 10 and data.stats["shards"] == 10 and data.stats["images"] == 1690
    return data


@pytest.fixture(scope="module")
def tiny_config():
    return preset("cpu", **TINY)


@pytest.fixture(scope="module")
def reference_run(tiny_config, prior_data, face_model, tmp_path_factory):
    """An uninterrupted tiny training (one thread): (folder, TrainResult). Tests only read it or copy it."""
    out = tmp_path_factory.mktemp("prior_reference")
    with _OneThread():
        result = train_prior(tiny_config, prior_data, face_model, out, log=None)
    return out, result


# ---------------------------------------------------------------- exact resume after a real kill


def test_resume_after_sigkill_reaches_the_uninterrupted_weights(reference_run, tiny_config, prior_data, face_model,
                                                                prior_pipeline, tmp_path):
    ref_dir, ref_result = reference_run
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), str(prior_pipeline["index"]), str(killed), json.dumps(TINY),
         "--kill-after", "3"],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_env(), cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "done step 3" in proc.stdout and "done step 4" not in proc.stdout

    # the crash left exactly the step-2 checkpoint, whole, and no temporary file
    assert sorted(p.name for p in killed.iterdir()) == [CHECKPOINT_NAME]
    at_kill = load_checkpoint(killed / CHECKPOINT_NAME)
    assert at_kill["step"] == 2
    assert at_kill["positions"] == [[0, 2]]
    assert [h["step"] for h in at_kill["history"]] == [2]

    logs: list[str] = []
    with _OneThread():
        resumed = train_prior(tiny_config, prior_data, face_model, killed, log=logs.append)
    assert resumed.resumed_from == 2 and resumed.steps == TINY["iterations"]
    assert any("resuming from step 2" in line for line in logs), logs

    ref = load_checkpoint(ref_dir / CHECKPOINT_NAME)
    res = load_checkpoint(killed / CHECKPOINT_NAME)
    assert ref["step"] == res["step"] == TINY["iterations"]
    _assert_same_state(ref["model"], res["model"])
    _assert_same_nested(ref["optimizer"], res["optimizer"], "optimizer")
    assert ref["positions"] == res["positions"] == [[0, TINY["iterations"]]]
    assert _history_without_timing(ref["history"]) == _history_without_timing(res["history"])
    assert [h["step"] for h in res["history"]] == [2, 4, 6]
    assert _history_without_timing(resumed.history) == _history_without_timing(ref_result.history)
    # the run did train: the final weights are not the step-2 weights
    assert any(not torch.equal(at_kill["model"][k], res["model"][k]) for k in res["model"])


def test_resuming_a_finished_run_trains_nothing(reference_run, tiny_config, prior_data, face_model, tmp_path):
    ref_dir, _ = reference_run
    shutil.copy(ref_dir / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    logs: list[str] = []
    result = train_prior(tiny_config, prior_data, face_model, tmp_path, log=logs.append)
    assert result.resumed_from == TINY["iterations"]
    assert [h["step"] for h in result.history] == [2, 4, 6]
    assert any("already has all" in line for line in logs), logs
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


class _Stop(Exception):
    pass


def _stop_after(step: int):
    def on_step(done: int, metrics: dict) -> None:
        if done == step:
            raise _Stop

    return on_step


def test_resumed_history_matches_when_log_every_does_not_divide_checkpoint_every(prior_data, face_model, tmp_path):
    config = preset("cpu", **{**TINY, "log_every": 3})
    with _OneThread():
        ref = train_prior(config, prior_data, face_model, tmp_path / "ref", log=None)
        with pytest.raises(_Stop):  # an in-process crash right after step 3 (checkpoint at step 2)
            train_prior(config, prior_data, face_model, tmp_path / "crashed", log=None, on_step=_stop_after(3))
        resumed = train_prior(config, prior_data, face_model, tmp_path / "crashed", log=None)
    assert resumed.resumed_from == 2
    _assert_same_state(load_checkpoint(tmp_path / "ref" / CHECKPOINT_NAME)["model"],
                       load_checkpoint(tmp_path / "crashed" / CHECKPOINT_NAME)["model"])
    assert _history_without_timing(resumed.history) == _history_without_timing(ref.history)


def test_training_jitters_the_ray_samples(prior_data, face_model, tmp_path, monkeypatch):
    generators = []
    original = AvatarPrior.render_rays

    def spy(self, *args, **kwargs):
        generators.append(kwargs.get("generator", args[8] if len(args) > 8 else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AvatarPrior, "render_rays", spy)
    train_prior(preset("cpu", **{**TINY, "iterations": 2}), prior_data, face_model, tmp_path, log=None)
    assert len(generators) == 2
    assert all(g is not None for g in generators)


# ---------------------------------------------------------------- checkpoint safety


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_real_checkpoint_loads_with_torch_weights_only(reference_run, face_model):
    ref_dir, _ = reference_run
    data = torch.load(ref_dir / CHECKPOINT_NAME, weights_only=True)
    assert data["format"] == CHECKPOINT_FORMAT
    assert data["face_model"] == face_model.name and data["step"] == TINY["iterations"]
    assert len(data["subjects"]) == 10 and data["data_fingerprint"]
    assert PriorConfig.from_dict(data["architecture"]["config"]) == preset("cpu", **TINY)
    model, ckpt = load_prior(ref_dir / CHECKPOINT_NAME)
    assert isinstance(model, AvatarPrior) and not model.training
    _assert_same_state(model.state_dict(), data["model"])
    assert ckpt["history"] == data["history"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_checkpoint_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    via_torch, via_pickle = tmp_path / "torch_save.pt", tmp_path / "plain_pickle.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "payload": _RunsCode(marker)}, via_torch)
    with open(via_pickle, "wb") as fh:
        pickle.dump({"format": CHECKPOINT_FORMAT, "payload": _RunsCode(marker)}, fh)
    for path in (via_torch, via_pickle):
        with pytest.raises(CheckpointError, match="not a loadable avatar prior checkpoint"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            load_prior(path)
        assert not marker.exists()
    # control: the file really is dangerous to an unsafe loader
    torch.load(via_torch, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_rejects_truncated_and_foreign_files(reference_run, tmp_path):
    ref_dir, _ = reference_run
    blob = (ref_dir / CHECKPOINT_NAME).read_bytes()
    for name, content in (("half.pt", blob[: len(blob) // 2]), ("head.pt", blob[:100]), ("empty.pt", b""),
                          ("junk.pt", b"certainly not a checkpoint\n" * 10)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="not a loadable"):
            load_checkpoint(tmp_path / name)

    torch.save({"format": "someone.else/7", "model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="someone.else/7"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "untagged.pt")
    with pytest.raises(CheckpointError, match="expected format"):
        load_checkpoint(tmp_path / "untagged.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------- resume refuses another run's checkpoint


def test_resume_refuses_another_config_or_other_data(reference_run, tiny_config, prior_data, face_model,
                                                     prior_pipeline, tmp_path):
    ref_dir, _ = reference_run
    path = tmp_path / CHECKPOINT_NAME
    shutil.copy(ref_dir / CHECKPOINT_NAME, path)
    before = path.read_bytes()

    with pytest.raises(ValueError, match="another config or on other data.*resume=False"):
        train_prior(tiny_config.with_changes(lr=1e-3), prior_data, face_model, tmp_path, log=None)
    assert path.read_bytes() == before

    cameras = sorted(pq.read_table(prior_pipeline["index"]).column("camera_id").unique().to_pylist())
    narrowed = prior_data_from_index(prior_pipeline["index"], sample_filter=SampleFilter(cameras=cameras[:-1]))
    assert narrowed.subjects == prior_data.subjects and narrowed.fingerprint != prior_data.fingerprint
    with pytest.raises(ValueError, match="another config or on other data"):
        train_prior(tiny_config, narrowed, face_model, tmp_path, log=None)
    assert path.read_bytes() == before

    # resume=False starts afresh and replaces the checkpoint
    fresh = tiny_config.with_changes(iterations=2, lr=1e-3)
    result = train_prior(fresh, narrowed, face_model, tmp_path, resume=False, log=None)
    assert result.resumed_from == 0
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 2 and PriorConfig.from_dict(ckpt["architecture"]["config"]) == fresh
    assert ckpt["data_fingerprint"] == narrowed.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


# ---------------------------------------------------------------- DDP under torchrun


def test_ddp_two_ranks_split_the_shards_and_agree_on_the_weights(tiny_config, prior_data, face_model,
                                                                 prior_pipeline, tmp_path):
    out, reports = tmp_path / "prior", tmp_path / "ranks"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(DDP_SCRIPT),
         str(prior_pipeline["index"]), str(out), str(reports), json.dumps({**TINY, "num_workers": 0})],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_env(), cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])

    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == r["result_world_size"] == 2 for r in ranks)
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME]
    assert ckpt["step"] == TINY["iterations"]
    assert len(ckpt["positions"]) == 2
    assert ckpt["positions"] == [r["position"] for r in ranks] == [[0, TINY["iterations"]]] * 2

    index = pq.read_table(prior_pipeline["index"]).to_pandas()
    shard_of = dict(zip(index["key"], index["shard_url"]))
    keys, subjects, shards = [], [], []
    for r in ranks:
        assert len(r["batches"]) == TINY["iterations"]
        assert all(len(b["keys"]) == TINY["images_per_batch"] for b in r["batches"])
        rank_keys = [k for b in r["batches"] for k in b["keys"]]
        assert len(set(rank_keys)) == len(rank_keys)  # no frame twice within an epoch
        keys.append(set(rank_keys))
        subjects.append({s for b in r["batches"] for s in b["subjects"]})
        shards.append({shard_of[k] for k in rank_keys})
    assert not keys[0] & keys[1]
    assert not subjects[0] & subjects[1]
    assert not shards[0] & shards[1]
    assert set().union(*subjects) <= set(prior_data.subjects)

    # DDP kept the replicas in lockstep, and rank 0 saved exactly those weights
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"] == state_digest(ckpt["model"])
    # loss/PSNR are averaged over the ranks (each rank's "seconds" is its own clock)
    assert _history_without_timing(ranks[0]["history"]) == _history_without_timing(ranks[1]["history"])
    assert [h["step"] for h in ranks[0]["history"]] == [2, 4, 6]
    assert _history_without_timing(ckpt["history"]) == _history_without_timing(ranks[0]["history"])

    # a 2-process checkpoint cannot be resumed by one process
    config = tiny_config.with_changes(num_workers=0)
    with pytest.raises(ValueError, match="2 process"):
        train_prior(config, prior_data, face_model, out, log=None)


# ---------------------------------------------------------------- schedule, seeding, config


def test_learning_rate_factor_is_a_cosine_from_one_to_the_floor():
    assert learning_rate_factor(0, 100) == 1.0
    assert learning_rate_factor(100, 100) == pytest.approx(MIN_LR_FRACTION)
    assert learning_rate_factor(50, 100) == pytest.approx((1 + MIN_LR_FRACTION) / 2)
    assert learning_rate_factor(25, 100) == pytest.approx(
        MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi / 4)))
    values = [learning_rate_factor(s, 100) for s in range(101)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert learning_rate_factor(250, 100) == pytest.approx(MIN_LR_FRACTION)  # clamped past the end
    assert learning_rate_factor(0, 0) == 1.0 and learning_rate_factor(3, 0) == pytest.approx(MIN_LR_FRACTION)


def test_step_generator_is_deterministic_and_distinct():
    def draw(seed, step, rank):
        return torch.rand(16, generator=step_generator(seed, step, rank))

    assert torch.equal(draw(0, 5, 0), draw(0, 5, 0))
    assert torch.equal(draw(123456789, 10**6, 7), draw(123456789, 10**6, 7))
    base = draw(0, 5, 0)
    for other in ((1, 5, 0), (0, 6, 0), (0, 5, 1)):
        assert not torch.equal(base, draw(*other)), other
    seeds = {step_generator(s, st, r).initial_seed() for s in range(3) for st in range(50) for r in range(4)}
    assert len(seeds) == 3 * 50 * 4
    # the global RNG is untouched
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    step_generator(0, 1, 0)
    assert torch.equal(torch.rand(3), expected)


def test_sample_rays_targets_follow_the_mask():
    B, H, W = 2, 4, 5
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(B, 3, H, W, generator=g)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.5).float()
    dirs = torch.randn(B, H, W, 3, generator=g)
    batch = {"rgb": rgb, "mask": mask, "dirs": dirs, "has_mask": torch.tensor([True, False])}
    rays = sample_rays(batch, 7, torch.Generator().manual_seed(3))
    again = sample_rays(batch, 7, torch.Generator().manual_seed(3))
    assert all(torch.equal(rays[k], again[k]) for k in rays)
    pix = torch.randint(0, H * W, (B, 7), generator=torch.Generator().manual_seed(3))
    for b in range(B):
        ys, xs = pix[b] // W, pix[b] % W
        torch.testing.assert_close(rays["dirs"][b], dirs[b, ys, xs])
        colour = rgb[b, :, ys, xs].T
        m = mask[b, 0, ys, xs]
        torch.testing.assert_close(rays["mask"][b], m)
        expected = colour * m[:, None] + (1 - m[:, None]) if b == 0 else colour
        torch.testing.assert_close(rays["target"][b], expected)


@pytest.mark.parametrize("changes, message", [
    ({"backbone": "voxels"}, "backbone"),
    ({"photometric_loss": "huber"}, "photometric_loss"),
    ({"crop_scale": 1.0}, "crop_scale"),
    ({"crop_scale": 0.5}, "crop_scale"),
    ({"resolution": 0}, "resolution"),
    ({"coarse_samples": 0}, "coarse_samples"),
    ({"fine_samples": -1}, "fine_samples"),
    ({"max_distance": 0.0}, "max_distance"),
    ({"shards_in_flight": 0}, "shards_in_flight"),
])
def test_prior_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        PriorConfig(**changes)
    with pytest.raises(ValueError, match=message):
        preset("cpu", **changes)


def test_prior_config_round_trips_and_rejects_unknown_fields():
    for name, config in PRESETS.items():
        assert PriorConfig.from_dict(config.to_dict()) == config, name
        assert PriorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name
        assert preset(name) == config
    custom = preset("gpu", backbone="triplane", photometric_loss="l2", seed=3)
    assert PriorConfig.from_dict(custom.to_dict()) == custom and custom.backbone == "triplane"
    with pytest.raises(ValueError, match="warp_speed"):
        PriorConfig.from_dict({**custom.to_dict(), "warp_speed": 9})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("tpu")
    fine_only = PriorConfig(fine_samples=0, num_workers=0, shuffle_buffer=0)
    assert fine_only.fine_samples == 0
    assert np.isclose(preset("cpu").crop_scale, PriorConfig().crop_scale)
