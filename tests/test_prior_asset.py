"""The ``avatar_prior`` asset, its job and runner, and ``o2a prior train|eval``.

The full cpu-preset training runs once per test session (``trained_prior`` in
conftest); every other training here is a few steps into a storage root of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import pytest
import torch

from capture_schema import derived_layout as layout
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.prior import avatar_prior
from pipelines.cli import main
from pipelines.partitions import SESSIONS_PARTITION
from pipelines.resources import FaceModelResource, StorageResource

QUICK = {"iterations": 4, "eval_frames": 2}
TINY_SETS = ["--set", "rays_per_image=32", "--set", "coarse_samples=8", "--set", "fine_samples=4",
             "--set", "images_per_batch=2"]
EXPECTED_METADATA = {"checkpoint", "report", "curves", "psnr_train_rays", "psnr_heldin_frames", "steps",
                     "rays_per_second", "subjects", "train_images", "backbone"}


def materialise(instance: dg.DagsterInstance, storage_url: str, config: dict | None = None,
                assets: list | None = None) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"avatar_prior": {"config": config or {}}}} if assets is None else None
    return dg.materialize(assets or [avatar_prior], instance=instance, raise_on_error=False, run_config=run_config,
                          resources={"storage": StorageResource(url=storage_url), "face_model": FaceModelResource()})


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("avatar_prior")[0].metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [event] = result.get_step_failure_events()
    data = event.step_failure_data
    assert data.user_failure_data is not None, data.error  # a dg.Failure, not a crash
    return data.user_failure_data.description


def run_messages(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(result.run_id)]


@pytest.fixture(scope="module")
def quick(prior_pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A storage root and Dagster instance of their own, sharing the fixture's shards (symlinked), own index."""
    root = tmp_path_factory.mktemp("prior_quick")
    (root / layout.SHARDS).symlink_to(Path(prior_pipeline["storage"][len("file://"):]) / layout.SHARDS)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SESSIONS_PARTITION,
                                    prior_pipeline["instance"].get_dynamic_partitions(SESSIONS_PARTITION))
    url = f"file://{root}"
    assert materialise(instance, url, assets=[dataset_index]).success
    return {"root": root, "url": url, "instance": instance}


# ---------------------------------------------------------------- the shared, full cpu-preset training


def test_avatar_prior_materialises_checkpoint_report_and_metadata(trained_prior) -> None:
    from training.prior.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
    from training.prior.config import preset

    meta, ckpt_path = trained_prior["metadata"], trained_prior["checkpoint"]
    root = trained_prior["storage_root"]
    folder = root / layout.prior_dir("anchored")
    assert ckpt_path == root / layout.prior_checkpoint("anchored") and ckpt_path.is_file()
    assert EXPECTED_METADATA <= set(meta)
    iterations = preset("cpu").iterations
    assert meta["steps"] == iterations and meta["backbone"] == "anchored"
    assert meta["subjects"] == 10 and meta["train_images"] == 10 * 169
    assert meta["rays_per_second"] > 0
    assert math.isfinite(meta["psnr_train_rays"]) and math.isfinite(meta["psnr_heldin_frames"])
    assert "data:image/png;base64," in meta["curves"] and "| rays / s |" in meta["report"]

    assert (folder / layout.PRIOR_CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((root / layout.prior_report("anchored")).read_text())
    assert report["steps"] == iterations and report["checkpoint"] == str(ckpt_path)
    assert report["config"] == preset("cpu").to_dict()
    assert report["evaluation"]["frames"] == 24
    assert report["history"][-1]["step"] == iterations and report["final"] == report["history"][-1]
    # It learned something (measured: 9.7 dB after 20 steps, 15.9 dB at 600; 19.8 dB on whole frames).
    assert meta["psnr_train_rays"] > report["history"][0]["psnr"] + 2 and meta["psnr_heldin_frames"] > 11, report
    assert {"config", "data", "history", "final", "evaluation", "rays_per_second", "train_seconds"} <= set(report)

    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ckpt = load_checkpoint(ckpt_path)
    assert raw["format"] == ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == iterations
    assert len(ckpt["subjects"]) == 10 and not {"sim0008", "sim0011"} & set(ckpt["subjects"])
    assert not list(folder.glob(".*"))  # no temporary file left behind


# ---------------------------------------------------------------- quick trainings in a root of their own


def test_rematerialising_resumes_as_a_no_op_and_a_new_config_restarts(quick) -> None:
    instance, url = quick["instance"], quick["url"]
    first = materialise(instance, url, QUICK)
    assert first.success
    meta = metadata_of(first)
    assert meta["steps"] == 4 and meta["resumed_from"] == 0
    ckpt = Path(meta["checkpoint"])
    before = ckpt.read_bytes()

    again = materialise(instance, url, QUICK)
    assert again.success
    meta2 = metadata_of(again)
    assert meta2["steps"] == 4 and meta2["resumed_from"] == 4  # nothing trained
    assert ckpt.read_bytes() == before
    assert meta2["psnr_train_rays"] == meta["psnr_train_rays"] and meta2["rays_per_second"] == meta["rays_per_second"]
    assert any("already has all 4 steps" in m for m in run_messages(instance, again))

    changed = materialise(instance, url, {**QUICK, "iterations": 5})
    assert changed.success
    meta3 = metadata_of(changed)
    assert meta3["steps"] == 5 and meta3["resumed_from"] == 0
    assert any("training from scratch" in m for m in run_messages(instance, changed))


def test_a_new_dataset_index_marks_the_prior_stale(quick) -> None:
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from pipelines.definitions import defs

    instance, url = quick["instance"], quick["url"]
    graph = defs.resolve_asset_graph()
    prior, index = dg.AssetKey("avatar_prior"), dg.AssetKey("dataset_index")
    assert graph.get(prior).parent_keys == {index}
    assert index in dg.AssetSelection.assets(prior).upstream(depth=1).resolve(graph)

    def status() -> StaleStatus:
        return CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance)).get_status(prior)

    def tags(key: dg.AssetKey) -> dict:
        return instance.get_latest_materialization_event(key).asset_materialization.tags

    config = {"backbone": "triplane", "iterations": 2, "eval_frames": 1}  # its own folder: prior/triplane
    assert materialise(instance, url, config).success
    assert status() == StaleStatus.FRESH
    assert tags(prior)["dagster/input_data_version/dataset_index"] == tags(index)["dagster/data_version"]

    assert materialise(instance, url, assets=[dataset_index]).success
    assert status() == StaleStatus.STALE
    assert tags(prior)["dagster/input_data_version/dataset_index"] != tags(index)["dagster/data_version"]

    again = materialise(instance, url, config)  # same shards, same config: resumes, nothing to train
    assert again.success and metadata_of(again)["resumed_from"] == 2
    assert status() == StaleStatus.FRESH


def test_runner_trains_the_prior_and_logs_one_line(quick) -> None:
    from pipelines.runner import train_avatar_prior

    lines: list[str] = []
    ok = train_avatar_prior(quick["instance"], StorageResource(url=quick["url"]), log=lines.append,
                            log_level="WARNING",
                            run_config={"ops": {"avatar_prior": {"config": {"backbone": "triplane", "iterations": 2,
                                                                             "eval_frames": 1}}}})
    assert ok and len(lines) == 1
    assert "held-in PSNR" in lines[0] and "2 steps" in lines[0]
    assert str(quick["root"] / layout.prior_checkpoint("triplane")) in lines[0]

    failed: list[str] = []
    assert not train_avatar_prior(quick["instance"], StorageResource(url=quick["url"]), log=failed.append,
                                  log_level="WARNING",
                                  run_config={"ops": {"avatar_prior": {"config": {"preset": "huge"}}}})
    assert "FAILED" in failed[0] and "cpu, gpu" in failed[0]


def test_bad_input_fails_with_a_clear_message(prior_pipeline, tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    instance = dg.DagsterInstance.ephemeral()
    url = f"file://{tmp_path}"
    assert "materialise dataset_index first" in failure_message(materialise(instance, url, QUICK))
    assert "'huge'" in (msg := failure_message(materialise(instance, url, {"preset": "huge"}))) and "cpu, gpu" in msg
    msg = failure_message(materialise(instance, url, {"backbone": "voxels"}))
    assert "'voxels'" in msg and "anchored, triplane" in msg

    index = pq.read_table(prior_pipeline["index"])
    (tmp_path / layout.DATASET).mkdir()
    pq.write_table(index.filter(pc.not_equal(index["split"], "train")), tmp_path / layout.INDEX)
    msg = failure_message(materialise(instance, url, QUICK))
    assert "no 'train' samples" in msg and "validation: 169" in msg
    (tmp_path / layout.INDEX).write_bytes(b"not parquet")
    assert "cannot be trained on" in failure_message(materialise(instance, url, QUICK))
    assert not (tmp_path / layout.PRIOR).exists() or not list((tmp_path / layout.PRIOR).rglob(layout.CHECKPOINT_FILE))


def test_definitions_have_the_prior_job() -> None:
    from pipelines.definitions import PRIOR_ASSETS, defs

    job = defs.resolve_job_def("train_avatar_prior")
    assert {n.name for n in job.nodes} == {"avatar_prior"} and PRIOR_ASSETS == [avatar_prior]


# ---------------------------------------------------------------- the CLI


def test_cli_prior_train_resume_and_eval(prior_pipeline, tmp_path: Path, capsys) -> None:
    index, out = str(prior_pipeline["index"]), tmp_path / "prior"
    args = ["prior", "train", "--index", index, "--out", str(out), "--iterations", "3", *TINY_SETS]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 steps" in printed and "PSNR on training rays" in printed and str(out / layout.CHECKPOINT_FILE) in printed
    from training.prior.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / layout.CHECKPOINT_FILE)
    assert ckpt["step"] == 3 and ckpt["architecture"]["config"]["rays_per_image"] == 32

    assert main(args) == 0
    assert "resumed from step 3" in capsys.readouterr().out

    assert main([*args[:6], "--iterations", "4", *TINY_SETS]) == 1  # another config: no silent restart
    assert "--no-resume" in capsys.readouterr().err
    assert main([*args[:6], "--iterations", "4", *TINY_SETS, "--no-resume"]) == 0
    assert load_checkpoint(out / layout.CHECKPOINT_FILE)["step"] == 4
    capsys.readouterr()

    checkpoint = str(out / layout.CHECKPOINT_FILE)
    assert main(["prior", "eval", "--checkpoint", checkpoint, "--index", index, "--frames", "2"]) == 0
    assert "PSNR over 2 frames" in capsys.readouterr().out
    assert main(["prior", "eval", "--checkpoint", checkpoint, "--index", index, "--split", "test"]) == 1
    assert "few-shot adaptation" in capsys.readouterr().err
    assert main(["prior", "eval", "--checkpoint", str(tmp_path / "none.pt"), "--index", index]) == 2


@pytest.mark.parametrize("setting, expected", [
    ("rays_per_imag=32", "did you mean 'rays_per_image'"),
    ("rays_per_image=many", "rays_per_image must be an integer, got 'many'"),
    ("iterations=1.5", "iterations must be an integer, got '1.5'"),
    ("rays_per_image=0", "rays_per_image must be >= 1"),
    ("lr=fast", "lr must be a number, got 'fast'"),
    ("backbone=voxels", "backbone must be one of"),
    ("rays_per_image", "expected FIELD=VALUE"),
])
def test_cli_bad_set_is_a_usage_error(setting: str, expected: str, tmp_path: Path, capsys) -> None:
    code = main(["prior", "train", "--index", str(tmp_path / "index.parquet"), "--out", str(tmp_path / "p"),
                 "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_cli_missing_index_and_bad_prior_iterations(tmp_path: Path, capsys) -> None:
    assert main(["prior", "train", "--index", str(tmp_path / "index.parquet"), "--out", str(tmp_path / "p")]) == 2
    assert "no dataset index" in capsys.readouterr().err
    assert main(["pipeline", "run", "--captures", str(tmp_path), "--storage", f"file://{tmp_path}/d",
                 "--prior-iterations", "0"]) == 2
    assert "--prior-iterations" in capsys.readouterr().err


def test_object_store_root_trains_in_a_copy_and_uploads(prior_pipeline) -> None:
    import fsspec

    url = "memory://o2a-prior-test/derived"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"/o2a-prior-test/derived/{layout.INDEX}", Path(prior_pipeline["index"]).read_bytes())
    instance = dg.DagsterInstance.ephemeral()
    try:
        first = materialise(instance, url, QUICK)
        assert first.success and metadata_of(first)["checkpoint"] == f"{url}/{layout.prior_checkpoint('anchored')}"
        names = sorted(Path(p).name for p in fs.find(f"/o2a-prior-test/derived/{layout.PRIOR}"))
        assert names == sorted([layout.CHECKPOINT_FILE, *layout.PRIOR_REPORT_FILES])
        again = materialise(instance, url, QUICK)  # the uploaded checkpoint is fetched and resumed
        assert again.success and metadata_of(again)["resumed_from"] == 4
        assert sorted(Path(p).name for p in fs.find(f"/o2a-prior-test/derived/{layout.PRIOR}")) == names
    finally:
        fs.rm("/o2a-prior-test", recursive=True)


def test_cli_prior_train_under_torchrun_two_processes(prior_pipeline, tmp_path: Path, capsys) -> None:
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = ["prior", "train", "--index", str(prior_pipeline["index"]), "--out", str(out), "--iterations", "3",
            *TINY_SETS]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("PSNR on training rays") == 1 and "over 2 process(es)" in done.stdout  # rank 0 only
    from training.prior.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / layout.CHECKPOINT_FILE)
    assert ckpt["step"] == 3 and len(ckpt["positions"]) == 2
    assert main(args) == 1  # one process cannot resume what two wrote
    assert "2 process(es)" in capsys.readouterr().err
