"""Shard loader (training.loader) and budget subsets (training.subsample)."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import training.loader as loader_mod
from capture_schema import derived_layout as layout
from shard_fixtures import camera_dict, image_colour, write_shards
from training.loader import SampleFilter, build_dataset, collate_samples, make_loader, node_info
from training.shards.format import train_size
from training.shards.read import tar_entries
from training.subsample import BudgetError, select_budget


def keys_of(dataset, num_workers: int = 0, batch_size: int = 2) -> list[str]:
    return [k for batch in make_loader(dataset, batch_size, num_workers) for k in batch["key"]]


# ---------------------------------------------------------------- splitting


def test_two_ranks_two_workers_see_every_sample_once(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=3, n_views=3, n_expressions=3, max_samples=4)  # 3 x 3 shards
    assert len(shards.urls) == 9
    seen = []
    for rank in (0, 1):
        ds = build_dataset(shards.urls, resolution=16, rank=rank, world_size=2)
        rank_keys = keys_of(ds, num_workers=2)
        assert rank_keys, f"rank {rank} got nothing"
        seen += rank_keys
    assert Counter(seen) == Counter(shards.keys)


def test_epoch_shuffle_still_exactly_once_across_ranks(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=2, n_views=3, n_expressions=4, max_samples=3)  # 8 shards
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            ds = build_dataset(shards.urls, resolution=16, rank=rank, world_size=2, shuffle_buffer=4,
                               seed=3, epoch=epoch)
            seen += keys_of(ds, num_workers=2)
        assert Counter(seen) == Counter(shards.keys)


def test_workers_start_after_parent_used_opencv_threads(tmp_path: Path) -> None:
    """A forked worker calling cv2.setNumThreads hangs once the parent's OpenCV pool has gone idle."""
    import time

    import cv2

    cv2.dilate(np.zeros((1024, 1024), np.uint8), np.ones((15, 15), np.uint8))  # starts OpenCV's pool
    time.sleep(0.5)  # its threads go to sleep on a condition variable
    shards = write_shards(tmp_path, n_subjects=1, n_views=2, n_expressions=2, max_samples=2)
    keys = [k for b in make_loader(build_dataset(shards.urls, resolution=8), 2, 2, timeout=30) for k in b["key"]]
    assert sorted(keys) == sorted(shards.keys)


def test_too_few_shards_for_workers_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = write_shards(tmp_path, n_subjects=1, n_views=2, n_expressions=1, max_samples=10)  # 1 shard
    with pytest.raises(ValueError, match="rank 1 would get no data"):
        list(build_dataset(shards.urls, resolution=16, rank=1, world_size=2))
    # as DataLoader worker 1 of 2 (simulated: torch takes 5 s per worker to shut down a failed loader)
    monkeypatch.setattr(loader_mod, "_worker", lambda: (1, 2))
    with pytest.raises(ValueError, match="worker 1 would get no shard; need n_shards >= world_size x num_workers"):
        list(build_dataset(shards.urls, resolution=16))


def test_node_info_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert node_info() == (1, 3)
    assert node_info(0, 2) == (0, 2)
    with pytest.raises(ValueError, match="both"):
        node_info(rank=0)
    with pytest.raises(ValueError, match="invalid rank"):
        node_info(2, 2)


# ---------------------------------------------------------------- filtering


def test_filter_selects_exact_cells(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=3, n_views=3, n_expressions=3, max_samples=5)
    flt = SampleFilter(subjects={"subj00", "subj02"}, cameras=["cam01"], expressions=("expr00", "expr02"))
    got = keys_of(build_dataset(shards.urls, resolution=16, sample_filter=flt))
    want = [k for k, (s, c, e) in shards.cells.items()
            if s in {"subj00", "subj02"} and c == "cam01" and e in {"expr00", "expr02"}]
    assert sorted(got) == sorted(want) and len(want) == 4
    by_key = SampleFilter(keys={want[0], "sess09/expr00/cam00"})
    assert keys_of(build_dataset(shards.urls, resolution=16, sample_filter=by_key)) == [want[0]]
    with pytest.raises(TypeError, match="not the string"):
        SampleFilter(subjects="subj00")


def test_unselected_images_are_never_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = frozenset({"sess00/expr00/cam00", "sess01/expr01/cam02"})
    shards = write_shards(tmp_path, n_subjects=2, n_views=3, n_expressions=2, corrupt=bad)
    flt = SampleFilter(keys=set(shards.keys) - bad)
    assert sorted(keys_of(build_dataset(shards.urls, resolution=16, sample_filter=flt), num_workers=2)) \
        == sorted(flt.keys)
    with pytest.raises(ValueError, match="'sess00/expr00/cam00'.*could not be decoded"):
        keys_of(build_dataset(shards.urls, resolution=16))
    calls = []
    real = loader_mod.decode_image
    monkeypatch.setattr(loader_mod, "decode_image", lambda data, **kw: calls.append(kw["key"]) or real(data, **kw))
    flt = SampleFilter(cameras={"cam01"})
    got = keys_of(build_dataset(shards.urls, resolution=16, sample_filter=flt))
    assert sorted(calls) == sorted(got) and len(got) == 4


def test_a_key_filter_parses_only_the_wanted_samples_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subset of a few images must not parse every sample's json of its shards (every epoch)."""
    shards = write_shards(tmp_path, n_subjects=2, n_views=3, n_expressions=2)
    wanted = {"sess00/expr01/cam02", "sess01/expr00/cam00"}
    parsed: list[str] = []
    real = loader_mod.json.loads
    monkeypatch.setattr(loader_mod.json, "loads", lambda text, **kw: parsed.append(real(text)["session_id"]) or
                        real(text, **kw))
    got = keys_of(build_dataset(shards.urls, resolution=16, sample_filter=SampleFilter(keys=wanted)))
    assert sorted(got) == sorted(wanted) and len(parsed) == 2
    parsed.clear()
    assert len(keys_of(build_dataset(shards.urls, resolution=16, sample_filter=SampleFilter(cameras={"cam01"})))) == 4
    assert len(parsed) == 12  # a filter on the json's fields parses every sample


# ---------------------------------------------------------------- decoding


def test_decode_original_resized_and_intrinsics_scaled(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=1, n_views=2, n_expressions=1, size=(80, 60), image_format="png",
                          max_samples=10, with_fit=True)
    samples = list(build_dataset(shards.urls, resolution=40))
    assert [s["key"] for s in samples] == shards.keys
    for c, sample in enumerate(samples):
        image = sample["image"]
        assert image.shape == (3, 30, 40) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        b, g, r = image_colour(0, 0, c)
        assert torch.allclose(image[:, 10, 10], torch.tensor([r, g, b]) / 255.0, atol=1e-6)  # RGB order
        cam = camera_dict(80, 60, c)
        K = sample["camera"]["K"]
        assert K.shape == (3, 3) and K[0, 0].item() == pytest.approx(cam["fx"] * 0.5)
        assert K[1, 1].item() == pytest.approx(cam["fy"] * 0.5)
        assert K[0, 2].item() == pytest.approx((cam["cx"] + 0.5) * 0.5 - 0.5, abs=1e-4)
        assert sample["camera"]["dist"].shape == (5,) and sample["camera"]["t"].shape == (3,)
        assert sample["mask"] is None
        assert sample["fit"]["identity"].shape == (4,) and sample["fit"]["rotation"].shape == (3, 3)
        assert sample["meta"]["camera_id"] == f"cam{c:02d}"


def test_decode_prefers_train_member_and_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = write_shards(tmp_path, n_subjects=1, n_views=2, n_expressions=1, size=(50, 100),
                          train_resolution=20, with_mask=True, max_samples=10)
    sizes = []
    real = loader_mod.decode_image
    monkeypatch.setattr(loader_mod, "decode_image",
                        lambda data, **kw: (lambda im: sizes.append(im.shape[:2]) or im)(real(data, **kw)))
    sample = next(iter(build_dataset(shards.urls, resolution=20)))
    assert sizes == [(20, 10), (20, 10)]  # train.png and mask.png only; the original is not decoded
    assert sample["image"].shape == (3, 20, 10) and sample["mask"].shape == (1, 20, 10)
    assert set(torch.unique(sample["mask"]).tolist()) == {0.0, 1.0}
    assert sample["camera"]["K"][0, 0].item() == pytest.approx(1.2 * 50 * 0.2)
    other = next(iter(build_dataset(shards.urls, resolution=40)))  # no train.png at 40: decode original
    assert other["image"].shape == (3, 40, 20) and other["mask"].shape == (1, 40, 20)
    assert train_size(50, 100, 20) == (10, 20) and train_size(640, 480, 256) == (256, 192)


def test_exif_orientation_is_ignored() -> None:
    """Pixels must stay in the calibrated sensor layout, whatever a JPEG's EXIF says."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((30, 40, 3), 128, np.uint8))
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + buf.tobytes()[2:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (40, 30)  # rotated by EXIF
    assert loader_mod.decode_image(data).shape == (30, 40, 3)
    assert loader_mod.decode_image(data, grayscale=True).shape == (30, 40)


def test_collate_and_missing_optional_fields(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=1, n_views=3, n_expressions=1, with_fit=True, max_samples=10)
    samples = list(build_dataset(shards.urls, resolution=16))
    samples[1] = {**samples[1], "fit": None}
    batch = collate_samples(samples)
    assert batch["image"].shape == (3, 3, 12, 16) and batch["camera"]["K"].shape == (3, 3, 3)
    assert batch["mask"] is None and batch["has_mask"] is None
    assert batch["has_fit"].tolist() == [True, False, True] and batch["fit"]["identity"].shape == (3, 4)
    assert len(batch["meta"]) == 3 and batch["key"] == shards.keys


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_matches_tarfile(fmt: int) -> None:
    names = ["a/b/c.jpg", "a/b/c.json", "s" * 90 + "/e/" + "c" * 40 + ".train.png", "x/ü.png", "empty.json"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2] = "s" * 90 + "/e/c.png"  # ustar splits long names into prefix + name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        dir_info = tarfile.TarInfo("a/b")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for i, name in enumerate(names):
            data = bytes(range(256))[: (i * 300) % 1000] if name != "empty.json" else b""
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    entries = list(tar_entries(buf, "mem"))
    assert entries[0] == ("a/b", None)  # not a regular file: named, no data
    got = entries[1:]
    assert [n for n, _ in got] == names
    assert [len(d) for _, d in got] == [len(bytes(range(256))[: (i * 300) % 1000]) if n != "empty.json" else 0
                                        for i, n in enumerate(names)]
    with pytest.raises(ValueError, match="not a tar file"):
        list(tar_entries(io.BytesIO(b"x" * 2048), "junk"))
    with pytest.raises(ValueError, match="truncated"):
        list(tar_entries(io.BytesIO(buf.getvalue()[:1500]), "cut"))
    with pytest.raises(ValueError, match="empty"):
        list(tar_entries(io.BytesIO(b""), "nothing"))


def test_worker_batches_equal_in_process_batches(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=2, n_views=2, n_expressions=2, with_fit=True, train_resolution=16,
                          with_mask=True, max_samples=2)
    ds = build_dataset(shards.urls, resolution=16)
    inline = {k: b for b in make_loader(ds, 2, 0) for k in b["key"]}
    for batch in make_loader(ds, 2, 2):  # built in shared memory, sent across processes
        ref = inline[batch["key"][0]]
        assert batch["key"] == ref["key"] and batch["meta"] == ref["meta"]
        for name in ("image", "mask", "has_mask", "has_fit"):
            assert torch.equal(batch[name], ref[name]), name
        for group in ("camera", "fit"):
            assert batch[group].keys() == ref[group].keys()
            assert all(torch.equal(batch[group][k], ref[group][k]) for k in ref[group])


def test_bad_format_is_clear(tmp_path: Path) -> None:
    import webdataset as wds

    url = tmp_path / "x-000000.tar"
    with wds.TarWriter(str(url)) as w:
        w.write({"__key__": "a/b/c", "json": b'{"format": "other"}', "jpg": b"x"})
    with pytest.raises(ValueError, match="expected 'o2a.shard/1'"):
        list(build_dataset([str(url)], resolution=8))


# ---------------------------------------------------------------- shuffling, URLs


def test_shuffle_deterministic_per_seed(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=3, n_views=3, n_expressions=2, max_samples=3)
    plain = keys_of(build_dataset(shards.urls, resolution=8))
    assert plain == shards.keys  # no shuffle: grid order

    def run(seed: int, epoch: int = 0, workers: int = 0) -> list[str]:
        return keys_of(build_dataset(shards.urls, resolution=8, shuffle_buffer=5, seed=seed, epoch=epoch), workers)

    a = run(1)
    assert a == run(1) and run(1, workers=2) == run(1, workers=2)
    assert a != run(2) and a != run(1, epoch=1) and a != plain
    assert Counter(a) == Counter(run(2)) == Counter(plain) == Counter(run(1, workers=2))
    ds = build_dataset(shards.urls, resolution=8, shuffle_buffer=5, seed=1)
    ds.set_epoch(1)
    assert keys_of(ds) == run(1, epoch=1)
    pickle.dumps(ds)  # picklable: "spawn" workers work too


def test_memory_and_file_urls(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=1, n_views=2, n_expressions=2, max_samples=2)
    fs = fsspec.filesystem("memory")
    urls = []
    for i, path in enumerate(shards.urls):
        relpath = layout.join(layout.shards_dir("s"), layout.shard_name("s", i))
        fs.pipe(f"/o2a-test/{relpath}", Path(path).read_bytes())
        urls.append(f"memory://o2a-test/{relpath}")
    try:
        assert keys_of(build_dataset(urls, resolution=8)) == shards.keys
    finally:
        fs.rm("/o2a-test", recursive=True)
    assert keys_of(build_dataset(["file://" + u for u in shards.urls], resolution=8)) == shards.keys
    with pytest.raises(OSError, match="cannot open shard"):
        list(build_dataset([str(tmp_path / "missing.tar")], resolution=8))


# ---------------------------------------------------------------- budgets


def grid_index(n_subjects: int = 6, cams: int = 5, exprs: int = 4, split_every: int = 0) -> pd.DataFrame:
    rows = []
    for s in range(n_subjects):
        for e in range(exprs):
            for c in range(cams):
                rows.append({"key": f"sess{s:02d}/expr{e:02d}/cam{c:02d}", "subject_id": f"subj{s:02d}",
                             "camera_id": f"cam{c:02d}", "expression": f"expr{e:02d}",
                             "split": "test" if split_every and s % split_every == 0 else "train"})
    return pd.DataFrame(rows)


def test_select_budget_exact_and_deterministic() -> None:
    index = grid_index()
    sel = select_budget(index, n_images=24, n_identities=4, views_per_identity=3, expressions_per_identity=2, seed=5)
    assert sel.n_images == 24 and len(set(sel.keys)) == 24 and len(sel.identities) == 4
    for s in sel.identities:
        assert len(sel.views[s]) == 3 and len(sel.expressions[s]) == 2
        assert sum(k.startswith(s.replace("subj", "sess")) for k in sel.keys) == 6
    assert select_budget(index, n_identities=4, views_per_identity=3, expressions_per_identity=2, seed=5) == sel
    other = select_budget(index, n_identities=4, views_per_identity=3, expressions_per_identity=2, seed=6)
    assert other.keys != sel.keys
    smaller = select_budget(index, n_identities=2, views_per_identity=3, expressions_per_identity=2, seed=5)
    assert set(smaller.keys) <= set(sel.keys)  # nested: ranks do not depend on the count
    assert sel.sample_filter.matches({"session_id": sel.keys[0].split("/")[0], "expression": sel.keys[0].split("/")[1],
                                      "camera_id": sel.keys[0].split("/")[2]})


def test_select_budget_explicit_lists() -> None:
    index = grid_index()
    sel = select_budget(index, n_identities=3, views=["cam00", "cam04"], expressions=["expr01"], seed=0)
    assert sel.n_images == 6
    assert all(sel.views[s] == ("cam00", "cam04") or set(sel.views[s]) == {"cam00", "cam04"} for s in sel.identities)
    assert all(sel.expressions[s] == ("expr01",) for s in sel.identities)
    drawn = select_budget(index, n_identities=2, views=["cam00", "cam01", "cam02"], views_per_identity=2,
                          expressions_per_identity=1)
    assert all(set(v) <= {"cam00", "cam01", "cam02"} and len(v) == 2 for v in drawn.views.values())


def test_select_budget_on_shards_filters_loader(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, n_subjects=3, n_views=3, n_expressions=3, max_samples=5)
    shard_of = shards.shard_of
    index = pa.table({"key": list(shards.cells), "subject_id": [v[0] for v in shards.cells.values()],
                      "camera_id": [v[1] for v in shards.cells.values()],
                      "expression": [v[2] for v in shards.cells.values()],
                      "shard_url": [shard_of[k] for k in shards.cells]})
    sel = select_budget(index, n_identities=2, views_per_identity=2, expressions_per_identity=2, seed=1)
    got = keys_of(build_dataset(list(sel.shard_urls), resolution=8, sample_filter=sel.sample_filter))
    assert sorted(got) == list(sel.keys) and len(got) == 8
    assert set(sel.shard_urls) == {shard_of[k] for k in sel.keys}


def test_select_budget_clear_errors() -> None:
    index = grid_index(n_subjects=10, split_every=4)  # subjects 0, 4, 8 are test: 7 train
    with pytest.raises(BudgetError, match="only 7 subject.*split 'train', 10 requested"):
        select_budget(index, split="train", n_identities=10, views_per_identity=1, expressions_per_identity=1)
    with pytest.raises(BudgetError, match="n_images=50 but .* 2 x 3 x 2 = 12"):
        select_budget(index, n_images=50, n_identities=2, views_per_identity=3, expressions_per_identity=2)
    with pytest.raises(BudgetError, match="views_per_identity"):
        select_budget(index, n_identities=2, expressions_per_identity=2)
    holey = index[~((index.subject_id.isin(["subj01", "subj02"])) & (index.camera_id == "cam03"))]
    holey = holey[~((holey.subject_id == "subj03") & (holey.camera_id.isin(["cam01", "cam02"])))]
    with pytest.raises(BudgetError, match="subj01 has 4 view"):
        select_budget(holey, n_identities=10, views_per_identity=5, expressions_per_identity=1)
    with pytest.raises(BudgetError, match=r"subj03 lacks \(camera, expression\) cell"):
        select_budget(holey, n_identities=10, views=["cam01", "cam02"], expressions_per_identity=1)
    ok = select_budget(holey, n_identities=7, views_per_identity=5, expressions_per_identity=4)
    assert not {"subj01", "subj02", "subj03"} & set(ok.identities) and ok.n_images == 140
    with pytest.raises(BudgetError, match="lacks column"):
        select_budget(index.drop(columns=["camera_id"]), n_identities=1, views_per_identity=1,
                      expressions_per_identity=1)
    with pytest.raises(BudgetError, match="exceeds the 2 views listed"):
        select_budget(index, n_identities=1, views=["cam00", "cam01"], views_per_identity=3,
                      expressions_per_identity=1)
