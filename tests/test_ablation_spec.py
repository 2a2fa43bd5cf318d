"""The balance-ablation spec: the shipped default, every validation failure, and subset selection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from capture_schema.layout import DEFAULT_CAMERAS, DEFAULT_EXPRESSIONS
from training.ablation.spec import DEFAULT_SPEC, SpecError, load_default_spec, load_spec, parse_spec
from training.prior import config as prior_cfg
from training.subsample import BudgetError

DEFAULT_NAMES = ["balanced", "identity_heavy", "view_heavy"]


def one(settings: str, top: str = "") -> str:
    """A version-1 spec with one configuration ``c`` (flow-style settings) and extra top-level lines."""
    return f"version: 1\n{top}configurations:\n  c: {{{settings}}}\n"


OK = "images: 8, identities: 2, views_per_identity: 2, expressions_per_identity: 2"


def synthetic_index(train_subjects: int = 10) -> pd.DataFrame:
    """train_subjects x 13 cameras x 13 expressions in the train split, plus one test subject."""
    rows = []
    for s in range(train_subjects + 1):
        subject, split = (f"subj{s:02d}", "train") if s < train_subjects else ("heldout", "test")
        for expression in DEFAULT_EXPRESSIONS:
            for camera in DEFAULT_CAMERAS:
                rows.append({"key": f"{subject}_s0/{expression}/{camera}", "subject_id": subject,
                             "camera_id": camera, "expression": expression, "split": split,
                             "shard_url": f"shards/{subject}_s0.tar"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the shipped default


def test_default_spec_loads() -> None:
    spec = load_default_spec()
    assert spec.names() == DEFAULT_NAMES
    assert spec.source == str(DEFAULT_SPEC) and len(spec.digest) == 64
    for config in spec.configurations:
        assert config.images == 24 == config.identities * config.n_views * config.n_expressions
        assert config.prior_config().iterations == 800 and config.seed == 0
        json.dumps(config.to_dict())
    splits = {name: (c.identities, c.n_views, c.n_expressions) for name, c in zip(spec.names(), spec.configurations)}
    assert splits == {"balanced": (2, 3, 4), "identity_heavy": (8, 3, 1), "view_heavy": (1, 12, 2)}
    assert spec.get("identity_heavy").expressions == ("neutral",) and spec.get("identity_heavy").views is None
    assert spec.get("view_heavy").views is None and spec.get("view_heavy").expressions is None
    assert spec.seeds == (0, 1)
    fewshot = spec.fewshot_config()
    assert fewshot.ks == (1, 3) and fewshot.methods == ("prior",) and fewshot.perturbed_ks == ()
    assert fewshot.eval_frames == 13 and spec.test_splits == ("validation", "test")
    data = json.loads(json.dumps(spec.to_dict()))
    assert [c["name"] for c in data["configurations"]] == DEFAULT_NAMES and data["fewshot"]["ks"] == [1, 3]
    assert data["configurations"][1]["expressions"] == ["neutral"] and data["digest"] == spec.digest
    assert data["seeds"] == [0, 1]


def test_get_unknown_name_lists_known() -> None:
    with pytest.raises(SpecError, match="no configuration 'balance'.*balanced, identity_heavy, view_heavy"):
        load_default_spec().get("balance")


def test_order_defaults_and_digest_follow_the_text() -> None:
    text = DEFAULT_SPEC.read_text()
    spec = parse_spec(text)
    assert spec.source == "<string>" and spec.digest == load_default_spec().digest
    extra = text + "\n  few_identities:\n    images: 12\n    identities: 3\n    views_per_identity: 4\n" \
                   "    expressions: [neutral]\n    prior_changes: {iterations: 50}\n"
    grown = parse_spec(extra)
    assert grown.names() == DEFAULT_NAMES + ["few_identities"]  # the partition set follows the file
    assert grown.digest != spec.digest
    assert grown.get("few_identities").prior_config().iterations == 50  # a configuration's key wins
    assert grown.get("few_identities").prior_preset == "cpu"  # ... and the defaults fill the rest
    reordered = parse_spec("version: 1\nconfigurations:\n" + "".join(
        f"  {name}: {{{OK}}}\n" for name in ("zeta", "alpha", "mid")))
    assert reordered.names() == ["zeta", "alpha", "mid"]
    assert reordered.get("alpha").prior_config() == prior_cfg.PRESETS["cpu"]  # no defaults: the plain cpu preset


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(one("images: 8, identities: 2, views_per_identity: 3, expressions_per_identity: 2"))
    with pytest.raises(SpecError, match=re.escape(str(path)) + r".*'c'.*'images'.*2 x 3 x 2 = 12"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- validation

BAD = [
    ("- a\n- b\n", "must be a mapping"),
    ("", "must be a mapping.*NoneType"),
    (f"configurations:\n  c: {{{OK}}}\n", "'version': missing"),
    (f"version: 2\nconfigurations:\n  c: {{{OK}}}\n", "unsupported version 2"),
    (f"version: true\nconfigurations:\n  c: {{{OK}}}\n", "unsupported version True"),
    (one(OK, "configs: {}\n"), r"unknown top-level key\(s\) 'configs' \(did you mean 'configurations'\?\)"),
    ("version: 1\n", "'configurations'.*missing"),
    ("version: 1\nconfigurations: {}\n", "'configurations'.*non-empty mapping"),
    ("version: 1\nconfigurations: [a, b]\n", "'configurations'.*got list"),
    (f"version: 1\nconfigurations:\n  bad.name: {{{OK}}}\n", "invalid configuration name 'bad.name'.*partition"),
    (f"version: 1\nconfigurations:\n  c: {{{OK}}}\n  c: {{{OK}}}\n", "(?s)invalid YAML.*duplicate key 'c'.*line 4"),
    ("version: 1\nconfigurations: {c: [\n", "<string>: invalid YAML"),
    (one(OK + ", view_per_identity: 2"), r"'c'.*'view_per_identity' \(did you mean 'views_per_identity'\?\)"),
    (one("identities: 2, views_per_identity: 2, expressions_per_identity: 2"), "'c', field 'images': missing"),
    (one("images: 8, views_per_identity: 2, expressions_per_identity: 2"), "'c', field 'identities': missing"),
    (one("images: 0, identities: 2, views_per_identity: 2, expressions_per_identity: 2"), "'images'.*>= 1, got 0"),
    (one("images: 8.0, identities: 2, views_per_identity: 2, expressions_per_identity: 2"), "'images'.*integer"),
    (one("images: 8, identities: two, views_per_identity: 2, expressions_per_identity: 2"), "'identities'.*'two'"),
    (one("images: 8, identities: true, views_per_identity: 2, expressions_per_identity: 2"), "'identities'.*True"),
    (one("images: 8, identities: 2, views_per_identity: -1, expressions_per_identity: 2"), "'views_per_identity'"),
    (one("images: 8, identities: 2, expressions_per_identity: 4"), "give views_per_identity.*or views"),
    (one("images: 8, identities: 2, views_per_identity: 4"), "give expressions_per_identity.*or expressions"),
    (one("images: 6, identities: 1, views: [a, b], views_per_identity: 3, expressions_per_identity: 2"),
     "'views_per_identity': 3 exceeds the 2 views listed"),
    (one("images: 2, identities: 1, views: [a, a], expressions_per_identity: 2"), "'views'.*distinct"),
    (one("images: 2, identities: 1, views: mid_C00, expressions_per_identity: 2"), "'views'.*list"),
    (one("images: 2, identities: 1, views: [a.b], expressions_per_identity: 2"), r"'views'.*invalid id\(s\)"),
    (one("images: 9, identities: 2, views_per_identity: 2, expressions_per_identity: 2"),
     r"'images': budget mismatch: images=9 .* 2 x 2 x 2 = 8"),
    (one("images: 9, identities: 3, views: [a, b], expressions: [n]"), "3 x 2 x 1 = 6"),
    (one(OK + ", seed: x"), "'seed'.*integer"),
    (one(OK + ", prior_preset: tpu"), "'prior_preset'.*unknown prior preset 'tpu'"),
    (one(OK + ", prior_changes: {iteration: 5}"), "'prior_changes'.*did you mean 'iterations'"),
    (one(OK + ", prior_changes: {iterations: 0}"), "'prior_changes'.*PriorConfig rejects.*iterations must be >= 1"),
    (one(OK + ", prior_changes: {backbone: nerf}"), "'prior_changes'.*backbone must be one of"),
    (one(OK + ", prior_changes: [1]"), "'prior_changes'.*mapping"),
    (one(OK, "defaults: {prior_preset: cpu, iters: 3}\n"), "'defaults'.*'iters'"),
    (one(OK, "defaults: {prior_changes: {lr: fast}}\n"), "configuration 'c', field 'prior_changes': lr must be a number"),
    (one(OK + ", prior_changes: {lr: 1e-3}"), "'prior_changes'.*'1e-3' .*write 1.0e-3"),
    (one(OK + ", prior_changes: {iterations: 4.5}"), "'prior_changes'.*iterations must be an integer"),
    (one(OK + ", prior_changes: {iterations: true}"), "'prior_changes': iterations must be an integer, got True"),
    (one(OK + ", prior_changes: {lr: .inf}"), "'prior_changes': lr must be a finite number, got inf"),
    (one(OK, "fewshot_preset: tpu\n"), "'fewshot_preset'.*unknown few-shot preset 'tpu'"),
    (one(OK, "fewshot: {kss: [1]}\n"), "'fewshot'.*did you mean 'ks'"),
    (one(OK, "fewshot: {ks: [0]}\n"), "'fewshot'.*FewShotConfig rejects.*ks must be"),
    (one(OK, "fewshot: {methods: [prior, magic]}\n"), "'fewshot'.*unknown method"),
    (one(OK, "fewshot: {ks: 3}\n"), "'fewshot'.*ks must be a list"),
    (one(OK, "fewshot: {latent_lr: 1e-2}\n"), "'fewshot'.*latent_lr must be a number.*1.0e-3"),
    (one(OK, "fewshot_preset: [cpu]\n"), "'fewshot_preset'.*unknown few-shot preset"),
    (one(OK, "test_splits: [train]\n"), "'test_splits'.*'train'"),
    (one(OK, "test_splits: []\n"), "'test_splits'.*non-empty"),
    (one(OK, "seeds: []\n"), "field 'seeds': must be a non-empty list of distinct integers >= 0"),
    (one(OK, "seeds: [0, 0]\n"), "'seeds'.*distinct.*got \\[0, 0\\]"),
    (one(OK, "seeds: [0, -1]\n"), "'seeds'.*>= 0"),
    (one(OK, "seeds: 2\n"), "'seeds'.*list.*got 2"),
    (one(OK, "seeds: [0, 1.5]\n"), "'seeds'.*integers"),
    (one(OK, "seeds: [true]\n"), "'seeds'.*integers"),
    (one(OK, "seed: [0, 1]\n"), r"unknown top-level key\(s\) 'seed' \(did you mean 'seeds'\?\)"),
]


@pytest.mark.parametrize(("text", "pattern"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_invalid_specs(text: str, pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern) as info:
        parse_spec(text)
    assert str(info.value).startswith("<string>: ")


def test_seeds_default_to_one_repeat_and_shift_subset_and_prior_seeds() -> None:
    assert parse_spec(one(OK)).seeds == (0,)
    spec = parse_spec(one(OK + ", seed: 5, prior_changes: {seed: 7}", "seeds: [3, 0]\n"))
    assert spec.seeds == (3, 0) and spec.to_dict()["seeds"] == [3, 0]  # file order, JSON-able
    config = spec.get("c")
    assert config.prior_config().seed == 7 and config.prior_config(3).seed == 10
    assert config.prior_config(3).iterations == config.prior_config().iterations  # only the seed moves
    index = synthetic_index()
    # Repeat seed s draws with the configuration's seed + s: the same subset as a configuration seeded 5 + s.
    shifted = parse_spec(one(OK + ", seed: 8")).get("c")
    assert config.select(index, 3) == shifted.select(index) != config.select(index)
    with pytest.raises(SpecError, match=r"mine\.yaml: field 'seeds'"):
        parse_spec(one(OK, "seeds: [a]\n"), "mine.yaml")


def test_defaults_fill_and_lists_become_tuples() -> None:
    spec = parse_spec(one("identities: 2, views: [mid_C00, mid_L30], views_per_identity: 1",
                          "defaults: {images: 2, expressions: [neutral], seed: 7}\n"
                          "fewshot: {ks: [2], perturbed_ks: [2], methods: [prior, scratch]}\n"))
    config = spec.get("c")
    assert (config.images, config.expressions, config.seed, config.views) == (2, ("neutral",), 7,
                                                                              ("mid_C00", "mid_L30"))
    fewshot = spec.fewshot_config()
    assert fewshot.ks == (2,) and fewshot.perturbed_ks == (2,) and fewshot.methods == ("prior", "scratch")
    assert spec.fewshot == {"ks": [2], "perturbed_ks": [2], "methods": ["prior", "scratch"]}  # JSON-able
    lr = parse_spec(one(OK + ", prior_changes: {lr: 1, seed: 3}")).get("c").prior_config()
    assert lr.lr == 1.0 and isinstance(lr.lr, float) and lr.seed == 3


# ---------------------------------------------------------------- selection


def test_select_on_synthetic_index() -> None:
    index = synthetic_index()
    split_of = dict(zip(index.key, index.split))
    spec = load_default_spec()
    for config in spec.configurations:
        subset = config.select(index)
        assert subset.n_images == config.images == len(set(subset.keys))
        assert len(subset.identities) == config.identities
        assert {split_of[k] for k in subset.keys} == {"train"}
        assert all(len(subset.views[s]) == config.n_views and len(subset.expressions[s]) == config.n_expressions
                   for s in subset.identities)
        assert config.select(index) == subset  # deterministic
        for seed in spec.seeds[1:]:  # another repeat draws another subset of the same shape
            other = config.select(index, seed)
            assert other.n_images == subset.n_images and other.keys != subset.keys
    identity_heavy = spec.get("identity_heavy").select(index)
    assert {k.split("/")[1] for k in identity_heavy.keys} == {"neutral"}
    assert len({k.split("/")[0] for k in identity_heavy.keys}) == 8
    assert len({k.split("/")[2] for k in identity_heavy.keys}) > 3  # views drawn per identity, not shared
    view_heavy = spec.get("view_heavy").select(index)
    assert len({k.split("/")[0] for k in view_heavy.keys}) == 1
    assert len({k.split("/")[2] for k in view_heavy.keys}) == 12
    assert len({k.split("/")[1] for k in view_heavy.keys}) == 2


def test_select_too_many_identities_names_configuration() -> None:
    spec = parse_spec("version: 1\nconfigurations:\n"
                      "  crowd: {images: 20, identities: 20, views: [mid_C00], expressions: [neutral]}\n")
    with pytest.raises(BudgetError) as info:
        spec.get("crowd").select(synthetic_index())
    message = str(info.value)
    assert message.startswith("configuration 'crowd' (budget 20 = 20 identities x 1 view ['mid_C00'] x "
                              "1 expression ['neutral'] per identity): ")
    # 10 train subjects: the held-out one is not counted
    assert "only 10 subject(s) in split 'train', 20 requested" in message
