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
