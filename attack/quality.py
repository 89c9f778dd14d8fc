"""Model quality per arm (#26 item 4; beyond the paper, attack.md §5): an arm that memorizes less
only matters if it did not simply learn less.

Two measures, both against the held-out images no arm trains on:

* ``heldout_loss``: the mean denoising loss over a spread of timesteps (t = 100 ... 900 of 1000,
  fixed noise per image and step, so every arm and every checkpoint is scored on the same noise).
  It is the diffusion objective itself on unseen data, measured at every checkpoint, which gives the
  curve against training steps.
* ``pixel_kid``: the kernel inception distance's estimator (unbiased squared MMD, cubic polynomial
  kernel) between the generations and the held-out images, on 8x8 area-averaged RGB pixels. There is
  no pretrained feature network offline, so these are pixel features: they see colour and layout, not
  content, and the number is comparable only between arms of one experiment. KID rather than FID
  because its estimator is unbiased at a few hundred images (FID's is not).
"""

from __future__ import annotations

import numpy as np
import torch

from attack.membership import denoising_loss
from attack.schedule import Schedule

QUALITY_TIMESTEPS = (100, 300, 500, 700, 900)  # a spread over the 1000-step scale (setting)
QUALITY_DRAWS = 2  # noise draws per image and timestep (setting)
KID_SIDE = 8  # pixel features: KID_SIDE x KID_SIDE x 3 area means (setting)


def heldout_loss(
    model: torch.nn.Module,
    schedule: Schedule,
    images: np.ndarray,
    captions: list[str],
    device: torch.device,
    seed: int = 0,
) -> float:
    """Mean denoising loss of ``model`` on held-out images over QUALITY_TIMESTEPS (lower: better)."""
    if not len(images):
        return float("nan")
    per_t = [
        denoising_loss(model, schedule, images, captions, t, QUALITY_DRAWS, seed + t, device).mean()
        for t in QUALITY_TIMESTEPS
    ]
    return float(np.mean(per_t))


def pixel_features(images: np.ndarray, side: int = KID_SIDE) -> np.ndarray:
    """(n, s*s*3) area means of uint8 (n, H, W, 3) images in [0, 1], s the largest cell count up to
    ``side`` that divides both H and W."""
    x = np.asarray(images, dtype=np.float64) / 255.0
    n, h, w, c = x.shape
    side = max(s for s in range(1, side + 1) if h % s == 0 and w % s == 0)
    return x.reshape(n, side, h // side, side, w // side, c).mean(axis=(2, 4)).reshape(n, -1)


def kid(a: np.ndarray, b: np.ndarray) -> float | None:
    """Unbiased squared MMD with the kernel (x.y / d + 1)^3 (Binkowski et al. 2018's KID)."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = a.shape[1]
    kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    term_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    term_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(term_a + term_b - 2 * kab.mean())


def pixel_kid(generations: np.ndarray, held_out: np.ndarray) -> float | None:
    """KID between generations and held-out images on pixel features (lower: closer to the data)."""
    return kid(pixel_features(generations), pixel_features(held_out))
