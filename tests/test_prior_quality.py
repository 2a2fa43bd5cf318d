"""What the demo's prior can do: reconstruct held-in training frames, and follow the 3DMM expression.

Both tests use the prior the ``avatar_prior`` asset trains on the 12-subject
fixture with the CPU preset (the demo's data and settings), trained once per
test session.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fitting.face_models import load_face_model
from fitting.face_models.builtin import LIPS_LOWER_OUTER, LIPS_UPPER_OUTER, LEFT_BROW, RIGHT_BROW
from training.loader import SampleFilter
from training.prior.checkpoint import load_prior
from training.prior.dataset import frame_loader, prior_data_from_index
from training.prior.evaluate import image_psnr, render_batch, target_images
from capture_schema.cameras import project_points
from training.prior.frames import MASKED_BACKGROUND

#: Held-in frames scored per training subject: frontal, oblique and profile views, four expressions.
HELD_IN_CELLS = (("neutral", "mid_C00"), ("smile", "mid_L30"), ("mouth_open", "up_R30"), ("eyes_closed", "low_C00"),
                 ("surprise", "mid_R60"))
#: Measured on this fixture (CPU preset, 1000 steps): 19.9 dB held-in over these 50 frames, 6.4 dB for
#: a blank background image, 1.65 dB more with a subject's own code than with the mean code. The
#: bounds leave ~2 dB for CPU/library differences; a prior that ignores its codes (or renders the
#: average head) fails the last one, one that has not learned the heads fails the first two.
MIN_HELD_IN_PSNR_DB = 18.0
MIN_GAIN_OVER_BLANK_DB = 10.0
MIN_GAIN_OVER_MEAN_CODE_DB = 0.5


@pytest.fixture(scope="module")
def prior(trained_prior):
    model, ckpt = load_prior(trained_prior["checkpoint"])
    return model, ckpt


@pytest.fixture(scope="module")
def face_model():
    return load_face_model("builtin", None, None)


def _frames(index, face_model, model, keys: set[str]) -> dict:
    data = prior_data_from_index(index)
    data = dataclasses.replace(data, sample_filter=SampleFilter(keys=keys))
    loader = frame_loader(data, face_model, model.config.with_changes(num_workers=0, images_per_batch=len(keys)),
                          shuffle=False, rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 1 and len(batches[0]["key"]) == len(keys), "every requested frame must load"
    return batches[0]


def test_prior_reconstructs_held_in_training_frames(prior, face_model, prior_pipeline):
    model, ckpt = prior
    keys = {f"{s}_s01/{e}/{c}" for s in ckpt["subjects"] for e, c in HELD_IN_CELLS}
    batch = _frames(prior_pipeline["index"], face_model, model, keys)
    target = target_images(batch)
    own = image_psnr(render_batch(model, face_model, batch), target)
    mean_code = model.mean_latent().expand(len(batch["key"]), -1)
    mean = image_psnr(render_batch(model, face_model, batch, latent=mean_code), target)
    blank = image_psnr(torch.full_like(target, MASKED_BACKGROUND), target)
    print(f"\nheld-in PSNR over {len(keys)} frames of {len(ckpt['subjects'])} subjects: own code "
          f"{own.mean():.2f} dB (min {own.min():.2f}), mean code {mean.mean():.2f} dB, blank {blank.mean():.2f} dB")
    assert len(ckpt["subjects"]) >= 8
    assert own.mean() >= MIN_HELD_IN_PSNR_DB
    assert own.mean() >= blank.mean() + MIN_GAIN_OVER_BLANK_DB
    assert own.mean() >= mean.mean() + MIN_GAIN_OVER_MEAN_CODE_DB


def _region_mask(batch: dict, face_model, expression: torch.Tensor, ids: tuple[int, ...], i: int,
                 pad: int) -> np.ndarray:
    """Crop pixels (bool H x W) inside the padded box of landmarks ``ids`` posed with ``expression``."""
    identity = batch["identity"][i:i + 1].double()
    with torch.no_grad():
        lm = face_model.landmarks_torch(identity, expression[None].double())[0].numpy()
    ids_index = {int(v): k for k, v in enumerate(face_model.landmark_embedding.landmark_ids)}
    pts = lm[[ids_index[j] for j in ids]] @ batch["rotation"][i].double().numpy().T + batch["translation"][i].numpy()
    pix = project_points(pts, batch["K"][i].numpy(), batch["dist"][i].numpy(), batch["R"][i].numpy(),
                         batch["t"][i].numpy())
    size = batch["rgb"].shape[-1]
    lo = np.floor(pix.min(0) - pad).clip(0, size - 1).astype(int)
    hi = np.ceil(pix.max(0) + pad).clip(0, size - 1).astype(int)
    mask = np.zeros((size, size), bool)
    mask[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    return mask


def test_prior_follows_an_unseen_expression_code(prior, face_model, prior_pipeline):
    """A subject rendered with a mouth-open code it never had (another subject's) opens its mouth.

    Rendered in the subject's real mouth-open frame (its pose and camera): with the
    other subject's mouth-open code the mouth region changes visibly against the
    subject's own neutral code, far more than the brows do, and it moves towards
    the subject's real mouth-open capture.
    """
    model, ckpt = prior
    subject, donor = ckpt["subjects"][0], ckpt["subjects"][1]
    keys = {f"{subject}_s01/mouth_open/mid_C00", f"{subject}_s01/neutral/mid_C00", f"{donor}_s01/mouth_open/mid_C00"}
    batch = _frames(prior_pipeline["index"], face_model, model, keys)
    row = {k: i for i, k in enumerate(batch["key"])}
    target_i = row[f"{subject}_s01/mouth_open/mid_C00"]
    neutral_code = batch["expression"][row[f"{subject}_s01/neutral/mid_C00"]]
    donor_code = batch["expression"][row[f"{donor}_s01/mouth_open/mid_C00"]]
    frame = {k: (v[target_i:target_i + 1].repeat(2, *[1] * (v.dim() - 1)) if torch.is_tensor(v) else [v[target_i]] * 2)
             for k, v in batch.items()}
    renders = render_batch(model, face_model, frame, expression=torch.stack([neutral_code, donor_code]))
    target = target_images(frame)[0]
    mouth = _region_mask(frame, face_model, donor_code, LIPS_UPPER_OUTER + LIPS_LOWER_OUTER, 0, pad=2)
    mouth |= _region_mask(frame, face_model, neutral_code, LIPS_UPPER_OUTER + LIPS_LOWER_OUTER, 0, pad=2)
    brows = _region_mask(frame, face_model, neutral_code, LEFT_BROW + RIGHT_BROW, 0, pad=1) & ~mouth
    change = (renders[1] - renders[0]).abs().mean(0).numpy()
    err_neutral = ((renders[0] - target) ** 2).mean(0).numpy()[mouth].mean()
    err_donor = ((renders[1] - target) ** 2).mean(0).numpy()[mouth].mean()
    print(f"\nmouth change {change[mouth].mean():.3f}, brow change {change[brows].mean():.3f}; mouth MSE vs the real "
          f"mouth-open capture: neutral code {err_neutral:.4f}, donor's mouth-open code {err_donor:.4f}")
    assert change[mouth].mean() >= 0.04  # ~10 grey levels on average over the whole mouth box
    # measured on off-span subjects: mouth 0.057 vs brows 0.020 (2.9x); 3.6x+ on built-in ones
    assert change[mouth].mean() >= 2 * change[brows].mean()
    assert err_donor < 0.8 * err_neutral
