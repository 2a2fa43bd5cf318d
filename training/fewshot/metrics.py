"""Image-quality scores for few-shot renderings of a held-out subject against its captured crops.

PSNR alone rewards blur, so the few-shot evaluation also reports SSIM (over the
whole crop and over the head mask only, since the background is not the
subject) and, when it is available offline, LPIPS. SSIM uses the Wang et al.
2004 settings (11-tap Gaussian window, sigma 1.5). Like scikit-image, SSIM
means leave out the window-radius strip along the image edges, where the map
depends on the padding; the masked mean does the same, so an all-ones mask
gives exactly the whole-image SSIM. LPIPS never downloads anything: without
the ``lpips`` package or torchvision's AlexNet weights in the local torch hub
cache it is skipped, with a note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from training.prior.evaluate import image_psnr

__all__ = ["FrameMetrics", "image_psnr", "image_ssim", "load_lpips", "masked_ssim", "score_images", "ssim_maps"]

SSIM_SIGMA = 1.5
#: Strip along each edge left out of SSIM means: the Gaussian window's radius (5 px), as in scikit-image.
SSIM_EDGE = int(3.5 * SSIM_SIGMA + 0.5)


def _check_images(rendered: torch.Tensor, target: torch.Tensor) -> None:
    if rendered.shape != target.shape or rendered.dim() != 4 or rendered.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W) image batches of the same shape, got rendered "
                         f"{tuple(rendered.shape)} and target {tuple(target.shape)}")


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.detach().cpu().float().numpy().transpose(0, 2, 3, 1)


def ssim_maps(rendered: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(B, H, W) per-pixel SSIM of (B, 3, H, W) images in [0, 1], averaged over the colour channels."""
    _check_images(rendered, target)
    maps = [structural_similarity(r, t, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA,
                                  use_sample_covariance=False, full=True)[1]
            for r, t in zip(_hwc(rendered), _hwc(target))]
    return np.stack([m.mean(axis=-1, dtype=np.float64) for m in maps])


def _interior(h: int, w: int) -> np.ndarray:
    keep = np.zeros((h, w), dtype=bool)
    keep[SSIM_EDGE:h - SSIM_EDGE, SSIM_EDGE:w - SSIM_EDGE] = True
    return keep


def image_ssim(rendered: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(B,) mean SSIM over the whole image (scikit-image's ``structural_similarity`` value)."""
    maps = ssim_maps(rendered, target)
    return maps[:, _interior(*maps.shape[1:])].mean(axis=1)


def masked_ssim(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor,
                threshold: float = 0.5) -> np.ndarray:
    """(B,) mean SSIM over the pixels where ``mask > threshold``; NaN without a mask or with an empty region."""
    b, _, h, w = rendered.shape
    if mask.shape != (b, 1, h, w) or has_mask.shape != (b,):
        raise ValueError(f"expected mask (B, 1, H, W) and has_mask (B,) for images {tuple(rendered.shape)}, got "
                         f"mask {tuple(mask.shape)} and has_mask {tuple(has_mask.shape)}")
    maps = ssim_maps(rendered, target)
    region = (mask[:, 0].detach().cpu().numpy() > threshold) & _interior(h, w)
    out = np.full(b, np.nan)
    for i in range(b):
        if bool(has_mask[i]) and region[i].any():
            out[i] = maps[i][region[i]].mean()
    return out


@dataclass(frozen=True)
class FrameMetrics:
    psnr: float
    ssim: float
    ssim_mask: float
    lpips: float


def score_images(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor,
                 lpips_model: object | None = None) -> list[FrameMetrics]:
    """Every score of each image; ``lpips`` is NaN without an LPIPS model (inputs are rescaled to [-1, 1] for it)."""
    _check_images(rendered, target)
    psnr = image_psnr(rendered.detach().float(), target.detach().float()).cpu().numpy()
    ssim = image_ssim(rendered, target)
    ssim_mask = masked_ssim(rendered, target, mask, has_mask)
    lp = np.full(len(psnr), np.nan)
    if lpips_model is not None:
        with torch.no_grad():
            lp = [float(lpips_model(r[None] * 2 - 1, t[None] * 2 - 1)) for r, t in zip(rendered, target)]
    return [FrameMetrics(float(p), float(s), float(m), float(v)) for p, s, m, v in zip(psnr, ssim, ssim_mask, lp)]


def load_lpips() -> tuple[object | None, str]:
    """(LPIPS AlexNet model or None, a note for the report); uses only weights already in the torch hub cache."""
    try:
        import lpips
    except ImportError:
        return None, "LPIPS skipped: the lpips package is not installed"
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(checkpoints.glob("alexnet-owt-*.pth")):
        return None, f"LPIPS skipped: no local AlexNet weights in {checkpoints} (never downloaded)"
    try:
        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as exc:  # noqa: BLE001 - any failure only means no LPIPS column
        return None, f"LPIPS skipped: {exc}"
    return model, "LPIPS: AlexNet (local weights)"
