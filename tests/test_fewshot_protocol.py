"""The few-shot protocol's parts: input choice, evaluation cover, camera perturbation, geometry corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitting.camera_model import axis_angle_to_matrix
from training.fewshot.adapt import GeometryCorrections
from training.fewshot.config import FewShotConfig, fewshot_preset
from training.fewshot.evaluate import perturb_cameras
from training.fewshot.selection import choose_eval_frames, choose_inputs, neutral_expression

CAMERAS = {"left": -40.0, "front": 0.0, "right": 40.0, "up": 5.0}  # yaw (degrees) of each camera
EXPRESSIONS = ["smile", "neutral", "mouth_open", "surprise"]


def _yaw(deg: float) -> np.ndarray:
    return np.asarray(axis_angle_to_matrix(torch.tensor([0.0, math.radians(deg), 0.0], dtype=torch.float64)))


def _frames(expressions=EXPRESSIONS, head_yaw: float = 0.0) -> list[dict]:
    """Cameras looking at a head at the origin that faces them (model -z forward -> world +z towards camera)."""
    head = _yaw(180.0 + head_yaw)  # model -z (forward) -> world +z
    frames = []
    for e_i, e in enumerate(expressions):
        for c, yaw in CAMERAS.items():
            R = _yaw(180.0 + yaw)  # camera +z looks along world -z (towards the face), turned by yaw
            coeffs = np.zeros(4)
            coeffs[e_i % 4] = 0.0 if e == "neutral" else 1.0 + e_i
            frames.append({"key": f"s/{e}/{c}", "camera_id": c, "expression_name": e, "R": R, "rotation": head,
                           "expression": coeffs})
    return frames


def test_inputs_start_frontal_neutral_then_spread_and_nest() -> None:
    frames = _frames()
    one = choose_inputs(frames, 1, seed=0)
    assert one == ["s/neutral/front"]
    five = choose_inputs(frames, 5, seed=0)
    assert five[0] == "s/neutral/front" and len(set(five)) == 5
    assert choose_inputs(frames, 3, seed=0) == five[:3]  # nested: the inputs of K=3 are the first of K=5
    by_key = {f["key"]: f for f in frames}
    first4 = [by_key[k] for k in five[:4]]  # 4 cameras and 4 expressions: the first 4 share neither
    assert len({f["camera_id"] for f in first4}) == 4 and len({f["expression_name"] for f in first4}) == 4
    assert choose_inputs(frames, 5, seed=0) == five  # seeded
    assert any(choose_inputs(frames, 5, seed=s) != five for s in range(1, 6))


def test_frontal_camera_follows_the_fitted_head_pose() -> None:
    # the chosen camera is the one the turned face looks into, not the rig's middle camera
    assert choose_inputs(_frames(head_yaw=40.0), 1, seed=0) == ["s/neutral/left"]
    assert choose_inputs(_frames(head_yaw=-40.0), 1, seed=0) == ["s/neutral/right"]


def test_neutral_is_the_smallest_expression_without_a_neutral_name() -> None:
    frames = _frames(["smile", "rest", "surprise"])
    for f in frames:
        f["expression"] = np.full(4, {"smile": 0.5, "rest": 0.1, "surprise": 0.9}[f["expression_name"]])
    assert neutral_expression(frames) == "rest"
    assert choose_inputs(frames, 1, seed=0) == ["s/rest/front"]


def test_input_choice_refuses_k_that_leaves_nothing_to_score() -> None:
    frames = _frames()[:3]
    with pytest.raises(ValueError, match="no frame to evaluate"):
        choose_inputs(frames, 3, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        choose_inputs(frames, 0, seed=0)


def test_eval_frames_exclude_inputs_and_cover_every_camera_and_expression() -> None:
    frames = _frames()
    inputs = choose_inputs(frames, 3, seed=0)
    everything = choose_eval_frames(frames, inputs, 0, seed=0)
    assert len(everything) == len(frames) - 3 and not set(everything) & set(inputs)
    some = choose_eval_frames(frames, inputs, 6, seed=0)
    assert len(some) == 6 and len(set(some)) == 6 and not set(some) & set(inputs)
    by_key = {f["key"]: f for f in frames}
    assert {by_key[k]["camera_id"] for k in some} == set(CAMERAS)
    assert {by_key[k]["expression_name"] for k in some} == set(EXPRESSIONS)
    assert choose_eval_frames(frames, inputs, 6, seed=0) == some
    with pytest.raises(ValueError, match="no frame left"):
        choose_eval_frames(frames, [f["key"] for f in frames], 0, seed=0)


def _cameras(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(torch.randn(n, 3, generator=g) * 0.5)
    return {"key": [f"k{i}" for i in range(n)], "expression_name": ["a", "b", "a"][:n], "R": R,
            "t": torch.randn(n, 3, generator=g), "expression": torch.randn(n, 5, generator=g),
            "rotation": axis_angle_to_matrix(torch.randn(n, 3, generator=g) * 0.2),
            "translation": torch.randn(n, 3, generator=g)}


def test_perturbed_cameras_turn_by_the_angle_about_their_centres() -> None:
    cams = _cameras()
    out = perturb_cameras(cams, 1.0, seed=3)
    relative = out["R"] @ cams["R"].transpose(1, 2)
    angles = torch.rad2deg(torch.arccos(((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert torch.allclose(angles, torch.ones(3), atol=1e-3)
    centres = -torch.einsum("bji,bj->bi", cams["R"], cams["t"])
    moved = -torch.einsum("bji,bj->bi", out["R"], out["t"])
    assert torch.allclose(centres, moved, atol=1e-5)
    assert torch.equal(perturb_cameras(cams, 1.0, seed=3)["R"], out["R"])
    assert not torch.equal(perturb_cameras(cams, 1.0, seed=4)["R"], out["R"])


def test_geometry_corrections_start_at_identity_and_share_a_frame_across_views() -> None:
    cams = _cameras()
    geometry = GeometryCorrections(cams, n_expression=5)
    images = torch.arange(3)
    same = geometry.apply(cams, images)
    for name in ("R", "t", "expression", "rotation", "translation"):
        assert torch.allclose(same[name], cams[name], atol=1e-6), name
    assert float(geometry.penalty().detach()) == 0.0
    with torch.no_grad():
        geometry.expression[0] += 1.0  # frame "a": images 0 and 2
        geometry.camera_rotation[1] = torch.tensor([0.0, math.radians(2.0), 0.0])
    moved = geometry.apply(cams, images)
    assert torch.allclose(moved["expression"][[0, 2]] - cams["expression"][[0, 2]], torch.ones(2, 5))
    assert torch.allclose(moved["expression"][1], cams["expression"][1])
    assert geometry.summary()["camera_rotation_deg_max"] == pytest.approx(2.0, rel=1e-4)
    assert float(geometry.penalty().detach()) > 0


def test_config_validation_and_presets() -> None:
    assert fewshot_preset("cpu").ks == (1, 3, 5)
    assert fewshot_preset("cpu", ks=[2]).max_k == 3  # perturbed K=3 still runs
    assert FewShotConfig(stage1_steps=10, stage2_steps=20).baseline_steps == 30
    with pytest.raises(ValueError, match="unknown method"):
        FewShotConfig(methods=("prior", "magic"))
    with pytest.raises(ValueError, match="ks"):
        FewShotConfig(ks=())
    with pytest.raises(ValueError, match="unknown few-shot preset"):
        fewshot_preset("tpu")
    cfg = fewshot_preset("gpu")
    assert FewShotConfig.from_dict(cfg.to_dict()) == cfg


def test_stage_two_weights_move_faster_with_more_input_images() -> None:
    from training.fewshot.adapt import weight_lr

    cfg = FewShotConfig(weight_lr=2e-4)
    assert [weight_lr(cfg, k) for k in (1, 3, 5)] == pytest.approx([2e-4, 6e-4, 1e-3])
    fixed = cfg.with_changes(weight_lr_per_image=False)
    assert [weight_lr(fixed, k) for k in (1, 3, 5)] == pytest.approx([2e-4] * 3)
