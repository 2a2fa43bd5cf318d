"""Few-shot image scores: PSNR, whole-image and masked SSIM, score_images, and the offline-only LPIPS loader."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from training.fewshot.metrics import (FrameMetrics, image_psnr, image_ssim, load_lpips, masked_ssim, score_images,
                                      ssim_maps)

SIZE = 64


def structured_image(seed: int = 0) -> np.ndarray:
    """(3, H, W) smooth colour gradients plus a few flat rectangles, in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(3 * x + 2 * y)])
    rng = np.random.default_rng(seed)
    for _ in range(4):
        r0, c0 = rng.integers(0, SIZE - 16, size=2)
        img[:, r0:r0 + 12, c0:c0 + 12] = rng.uniform(0, 1, size=(3, 1, 1))
    return img.clip(0, 1)


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).float()


def square_mask(lo: int, hi: int, n: int = 1) -> torch.Tensor:
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[:, :, lo:hi, lo:hi] = 1.0
    return mask


def test_identical_images_score_perfectly():
    img = batch(structured_image(0), structured_image(1))
    assert (image_psnr(img, img.clone()) >= 99.0).all()
    np.testing.assert_allclose(image_ssim(img, img.clone()), 1.0, atol=1e-6)
    np.testing.assert_allclose(masked_ssim(img, img.clone(), square_mask(16, 48, 2), torch.ones(2, dtype=torch.bool)),
                               1.0, atol=1e-6)


def test_psnr_of_constant_offset():
    target = torch.full((2, 3, SIZE, SIZE), 0.5, dtype=torch.float64)
    assert image_psnr(target + 0.1, target).tolist() == pytest.approx([20.0, 20.0], abs=1e-9)


def test_ssim_decreases_with_noise():
    clean = structured_image(0)
    rng = np.random.default_rng(42)
    noise = rng.standard_normal(clean.shape)
    stds = [0.0, 0.01, 0.03, 0.1, 0.3]
    target = batch(*[clean] * len(stds))
    rendered = batch(*[(clean + s * noise).clip(0, 1) for s in stds])
    ssim = image_ssim(rendered, target)
    assert ssim[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(ssim) < 0), ssim
    assert ssim[-1] < 0.5


def test_ssim_matches_scikit_image_reference():
    rng = np.random.default_rng(3)
    target = batch(*[structured_image(i) for i in range(3)])
    rendered = (target + 0.08 * torch.from_numpy(rng.standard_normal(target.shape)).float()).clamp(0, 1)
    reference = [structural_similarity(r.numpy().transpose(1, 2, 0), t.numpy().transpose(1, 2, 0), channel_axis=-1,
                                       data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                 for r, t in zip(rendered, target)]
    np.testing.assert_allclose(image_ssim(rendered, target), reference, atol=1e-6)
    assert ssim_maps(rendered, target).shape == (3, SIZE, SIZE)


def test_masked_ssim_only_sees_the_mask():
    clean = structured_image(0)
    noise = 0.2 * np.random.default_rng(5).standard_normal(clean.shape)
    mask, has_mask = square_mask(24, 40), torch.ones(1, dtype=torch.bool)
    outside = np.ones((SIZE, SIZE), dtype=bool)
    outside[16:48, 16:48] = False  # 8 px clear of the mask edge: more than the 5 px SSIM window radius
    target = batch(clean)

    corrupt_out = batch(np.where(outside, (clean + noise).clip(0, 1), clean))
    assert masked_ssim(corrupt_out, target, mask, has_mask)[0] == pytest.approx(1.0, abs=1e-6)
    assert image_ssim(corrupt_out, target)[0] < 0.9

    inside = mask[0, 0].numpy() > 0.5
    corrupt_in = batch(np.where(inside, (clean + noise).clip(0, 1), clean))
    in_masked, in_full = masked_ssim(corrupt_in, target, mask, has_mask)[0], image_ssim(corrupt_in, target)[0]
    assert in_masked < in_full - 0.1 and in_full < 1.0


def test_masked_ssim_with_full_mask_is_image_ssim():
    target = batch(structured_image(0))
    rendered = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    full = masked_ssim(rendered, target, torch.ones(1, 1, SIZE, SIZE), torch.ones(1, dtype=torch.bool))
    np.testing.assert_allclose(full, image_ssim(rendered, target), atol=1e-9)


def test_masked_ssim_nan_without_mask_or_empty_region():
    img = batch(structured_image(0), structured_image(1), structured_image(2))
    mask = square_mask(16, 48, 3)
    mask[1] = 0.0
    mask[2] = 0.4  # soft mask entirely under the threshold
    out = masked_ssim(img, img.clone(), mask, torch.tensor([False, True, True]))
    assert np.isnan(out).all()
    out = masked_ssim(img, img.clone(), square_mask(16, 48, 3), torch.tensor([False, True, True]))
    assert np.isnan(out[0]) and out[1:] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_shape_mismatch_raises():
    a = torch.zeros(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="same shape"):
        image_ssim(a, torch.zeros(2, 3, SIZE, SIZE - 1))
    with pytest.raises(ValueError, match=r"\(2, 1, 64, 64\)"):
        score_images(torch.zeros(2, 1, SIZE, SIZE), torch.zeros(2, 1, SIZE, SIZE), square_mask(0, 1, 2),
                     torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        masked_ssim(a, a, torch.zeros(2, SIZE, SIZE), torch.ones(2, dtype=torch.bool))


def test_score_images_one_metrics_per_image():
    target = batch(structured_image(0), structured_image(1))
    rendered = (target + 0.1).clamp(0, 1)
    has_mask = torch.tensor([True, False])
    scores = score_images(rendered, target, square_mask(16, 48, 2), has_mask)
    assert len(scores) == 2 and all(isinstance(s, FrameMetrics) for s in scores)
    assert all(math.isnan(s.lpips) for s in scores)
    assert scores[0].psnr == pytest.approx(float(image_psnr(rendered, target)[0]))
    assert scores[1].ssim == pytest.approx(float(image_ssim(rendered, target)[1]))
    assert not math.isnan(scores[0].ssim_mask) and math.isnan(scores[1].ssim_mask)

    seen = []

    def fake_lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((float(x.min()), float(y.max())))
        return (x - y).abs().mean().reshape(1, 1, 1, 1)

    scores = score_images(rendered, target, square_mask(16, 48, 2), has_mask, lpips_model=fake_lpips)
    assert len(seen) == 2 and all(lo >= -1 and hi <= 1 for lo, hi in seen)
    assert [s.lpips for s in scores] == pytest.approx([float(2 * (r - t).abs().mean()) for r, t in zip(rendered, target)])


def test_load_lpips_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes ``import lpips`` fail whatever is installed
    model, note = load_lpips()
    assert model is None and note == "LPIPS skipped: the lpips package is not installed"


def test_load_lpips_in_this_environment():
    model, note = load_lpips()
    assert note.startswith("LPIPS skipped") if model is None else note == "LPIPS: AlexNet (local weights)"


def fake_lpips_module(monkeypatch, factory) -> list:
    calls = []
    module = types.ModuleType("lpips")
    module.LPIPS = lambda **kwargs: calls.append(kwargs) or factory()
    monkeypatch.setitem(sys.modules, "lpips", module)
    return calls


def test_load_lpips_never_downloads(monkeypatch, tmp_path):
    calls = fake_lpips_module(monkeypatch, lambda: pytest.fail("LPIPS built without local weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, note = load_lpips()
    assert model is None and note.startswith("LPIPS skipped: no local AlexNet weights")
    assert str(tmp_path / "checkpoints") in note
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_load_lpips_with_local_weights(monkeypatch, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    built = torch.nn.Identity().train()
    calls = fake_lpips_module(monkeypatch, lambda: built)
    model, note = load_lpips()
    assert model is built and not model.training and note == "LPIPS: AlexNet (local weights)"
    assert calls == [{"net": "alex", "verbose": False}]

    def broken():
        raise RuntimeError("bad checkpoint")

    fake_lpips_module(monkeypatch, broken)
    assert load_lpips() == (None, "LPIPS skipped: bad checkpoint")
