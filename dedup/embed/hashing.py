"""Exact and perceptual hashes of images.

``phash`` is the DCT perceptual hash as the imagehash package defines it (32x32 greyscale, the 8x8
lowest frequencies against their median), bit for bit, packed into a uint64 so hashes compare with one
XOR and a popcount. The mirrored hash comes from the same DCT: reversing a row multiplies its k-th
DCT-II coefficient by (-1)^k, so a mirror flip costs no second resize.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.fft import dct

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
_SIGN = np.array([(-1) ** k for k in range(HASH_SIZE)], dtype=np.float64)
_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack(bits: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(_WEIGHTS[bits.ravel()]) if bits.any() else 0)


def phash_pair(image: Image.Image) -> tuple[int, int]:
    """(hash of the image, hash of its mirror image), each a 64-bit unsigned int."""
    size = HASH_SIZE * HIGHFREQ_FACTOR
    pixels = np.asarray(image.convert("L").resize((size, size), Image.LANCZOS), dtype=np.float64)
    coeffs = dct(dct(pixels, axis=0, type=2), axis=1, type=2)
    low = coeffs[:HASH_SIZE, :HASH_SIZE]
    mirrored = low * _SIGN[None, :]
    return _pack(low > np.median(low)), _pack(mirrored > np.median(mirrored))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hash arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int64)


BORDER_STD = 6.0  # a row or column is "uniform" when its pixels vary less than this (0-255)
BORDER_DIFF = 12.0  # ... and its mean colour is this close to the edge's
BORDER_MAX = 0.4  # never trim more than this share of a side


def trim_border(image: Image.Image) -> Image.Image:
    """The image without a uniform border or letterbox bars (any colour), so that a padded copy hashes
    and embeds like its original. Content is never trimmed past ``BORDER_MAX`` of a side."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = arr.shape[:2]
    if h < 16 or w < 16:
        return image

    def depth(lines: np.ndarray, limit: int) -> int:
        edge = lines[0].mean(axis=0)
        n = 0
        for line in lines[:limit]:
            if line.std(axis=0).max() > BORDER_STD or np.abs(line.mean(axis=0) - edge).max() > BORDER_DIFF:
                break
            n += 1
        return n

    top = depth(arr, int(h * BORDER_MAX))
    bottom = depth(arr[::-1], int(h * BORDER_MAX))
    left = depth(arr.transpose(1, 0, 2), int(w * BORDER_MAX))
    right = depth(arr.transpose(1, 0, 2)[::-1], int(w * BORDER_MAX))
    if top + bottom + left + right == 0 or h - top - bottom < 8 or w - left - right < 8:
        return image
    return image.crop((left, top, w - right, h - bottom))
