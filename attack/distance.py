"""Pixel-space distances of Carlini et al. 2023 (attack.md §1). Images are float RGB in [0, 1].

* ``l2``: normalized Euclidean distance, sqrt(mean((a - b)^2)) over all H*W*3 values (§4.1).
* ``tiled_l2``: the maximum of ``l2`` over a 4x4 grid of equal non-overlapping tiles (§4.2.1), so
  every region must match.
* ``calibrated_l2``: l2(g, x) / (alpha * mean l2 from x to its n nearest training images), alpha = 0.5,
  n = 50 (§5.1). The neighbourhood is measured from x, the training image, not from the generation.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.5  # attack.md §1, calibrated l2 (paper §5.1)
NEIGHBOURS = 50  # attack.md §1, n
GRID = 4  # attack.md §1, tiled l2: 4x4 tiles (paper §4.2.1)
DELTA = 0.15  # attack.md §2: extracted when l2 <= 0.15 (paper §4.1)
CALIBRATED_THRESHOLDS = (1 / 3, 0.5, 1.0)  # attack.md §1 (setting): report all three, default 1/3


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) to float64 in [0, 1]; float input is returned as float64 unchanged."""
    x = np.asarray(images)
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalized l2 over the last three axes (H, W, 3); broadcasts over leading axes."""
    d = as_float(a) - as_float(b)
    return np.sqrt(np.mean(d * d, axis=(-3, -2, -1)))


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Maximum over a grid x grid tiling of the per-tile normalized l2 (H and W divisible by grid)."""
    d = as_float(a) - as_float(b)
    *lead, h, w, c = d.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not divisible into a {grid}x{grid} grid")
    tiles = d.reshape(*lead, grid, h // grid, grid, w // grid, c)
    per_tile = np.sqrt(np.mean(tiles * tiles, axis=(-4, -2, -1)))
    return per_tile.reshape(*lead, grid * grid).max(axis=-1)


def neighbourhood_l2(train: np.ndarray, n: int = NEIGHBOURS) -> tuple[np.ndarray, int]:
    """Mean l2 from each training image to its n nearest other training images, and the n used.

    With fewer than n + 1 training images all the others are used (attack.md §1); the caller reports it.
    """
    import faiss

    x = as_float(train).reshape(len(train), -1).astype(np.float32)
    used = min(n, len(x) - 1)
    if used < 1:
        raise ValueError("the calibrated l2 needs at least two training images")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, idx = index.search(x, used + 1)
    own = idx == np.arange(len(x))[:, None]
    # drop each image's own entry (or the farthest, if an exact twin displaced it from first place)
    keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(used + 1)[None, :] < used)
    d = np.sqrt(np.maximum(dist[keep].reshape(len(x), used), 0) / x.shape[1])
    return d.mean(axis=1), used


def calibrated_l2(dist: np.ndarray, neighbourhood: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    return np.asarray(dist) / (alpha * np.maximum(np.asarray(neighbourhood), 1e-12))
