"""Hashes and border trimming, by construction: exact crop boxes for each side's border, the limits
that keep content, Hamming distances and the exact hash by hand."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from dedup.embed.hashing import BORDER_MAX, hamming, phash_pair, sha256, trim_border


def _padded(
    content: Image.Image, top: int, bottom: int, left: int, right: int, colour=(0, 0, 0)
) -> Image.Image:
    w, h = content.size
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), colour)
    canvas.paste(content, (left, top))
    return canvas


@pytest.mark.parametrize(
    ("top", "bottom", "left", "right"),
    [(10, 0, 0, 0), (0, 10, 0, 0), (0, 0, 10, 0), (0, 0, 0, 10), (12, 12, 0, 0), (3, 5, 7, 9)],
)
def test_each_sides_border_is_trimmed_exactly(top, bottom, left, right):
    content = photo(1, (96, 72))
    out = trim_border(_padded(content, top, bottom, left, right))
    assert out.size == content.size
    assert np.array_equal(np.asarray(out), np.asarray(content))


def test_a_white_or_grey_border_is_trimmed_like_a_black_one():
    content = photo(2, (80, 60))
    for colour in ((255, 255, 255), (128, 128, 128)):
        assert trim_border(_padded(content, 8, 8, 8, 8, colour)).size == content.size


def test_no_border_small_images_and_content_limits_are_left_alone():
    content = photo(3, (96, 72))
    assert trim_border(content) is content
    tiny = Image.new("RGB", (15, 40), "black")
    assert trim_border(tiny) is tiny
    flat = Image.new("RGB", (100, 100), "black")  # all "border": each side stops at the limit
    assert trim_border(flat).size == (100 - 2 * int(100 * BORDER_MAX),) * 2


def test_trimming_stops_at_the_limit_share_of_a_side():
    content = photo(4, (100, 20))
    padded = _padded(content, 60, 0, 0, 0)  # 60 of 80 rows uniform: at most 40 % are trimmed
    out = trim_border(padded)
    assert out.size == (100, 80 - int(80 * BORDER_MAX))


def test_a_noisy_border_within_tolerance_is_trimmed_and_an_edge_with_detail_is_not():
    rng = np.random.default_rng(0)
    content = np.asarray(photo(5, (80, 60)))
    noisy = np.zeros((60 + 20, 80, 3), np.uint8)
    noisy[10:70] = content
    noisy[:10] = rng.integers(0, 4, size=(10, 80, 3))  # std well under 6
    noisy[70:] = rng.integers(0, 4, size=(10, 80, 3))
    assert trim_border(Image.fromarray(noisy)).size == (80, 60)
    striped = noisy.copy()
    striped[:10, ::2] = 255  # a detailed top edge: not a border
    assert trim_border(Image.fromarray(striped)).size[1] > 60


def test_hamming_counts_differing_bits():
    a = np.array([0, 0xFF, 2**63, 2**64 - 1], dtype=np.uint64)
    b = np.array([0, 0x0F, 0, 0], dtype=np.uint64)
    assert hamming(a, b).tolist() == [0, 4, 1, 64]
    assert hamming(a[:, None], a[None, :]).shape == (4, 4)


def test_sha256_is_the_standard_digest():
    assert sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_phash_bits_by_hand_and_the_mirror_hash():
    from scipy.fft import dct

    im = photo(6, (120, 90))
    pixels = np.asarray(im.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = dct(dct(pixels, axis=0, type=2), axis=1, type=2)[:8, :8]
    bits = (low > np.median(low)).ravel()
    want = sum(1 << (63 - i) for i, bit in enumerate(bits) if bit)
    straight, mirrored = phash_pair(im)
    assert straight == want
    assert mirrored == phash_pair(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0]
    symmetric = np.asarray(im)[:, :60]
    symmetric = Image.fromarray(np.concatenate([symmetric, symmetric[:, ::-1]], axis=1))
    h, m = phash_pair(symmetric)
    assert hamming(np.array([h], np.uint64), np.array([m], np.uint64))[0] <= 2


def test_trimming_at_its_boundaries():
    """16 px is the smallest side trimmed; at least 8 px of content are always left."""
    flat = Image.new("RGB", (40, 40), "black")
    assert trim_border(flat).size == (8, 8)  # 16 rows off each side leave exactly 8
    flat20 = Image.new("RGB", (20, 20), "black")
    assert trim_border(flat20) is flat20  # 8 off each side would leave 4
    content = photo(7, (16, 16))
    framed = _padded(content, 0, 0, 2, 2)  # 20 wide, 16 high: the smallest height trimmed
    assert trim_border(framed).size == (16, 16)


def test_pack_of_no_set_bits_is_zero():
    from dedup.embed.hashing import _pack

    assert _pack(np.zeros((8, 8), dtype=bool)) == 0
    one = np.zeros((8, 8), dtype=bool)
    one[7, 7] = True
    assert _pack(one) == 1


@pytest.mark.parametrize(("width", "trimmed"), [(16, True), (15, False)])
def test_the_narrowest_image_trimmed_is_16_wide(width, trimmed):
    content = photo(8, (width, 20))
    barred = _padded(content, 20, 20, 0, 0)  # tall enough; only the width is at the limit
    out = trim_border(barred)
    assert (out.size == content.size) if trimmed else (out is barred)


def test_a_one_pixel_frame_is_trimmed():
    content = photo(9, (40, 30))
    framed = _padded(content, 1, 1, 1, 1, colour=(200, 30, 30))
    assert trim_border(framed).size == content.size


def test_the_border_tolerances_are_inclusive():
    """A row whose pixels vary by exactly BORDER_STD, or whose mean is exactly BORDER_DIFF from the
    edge's, still counts as border."""
    from dedup.embed.hashing import BORDER_DIFF, BORDER_STD

    content = np.asarray(photo(10, (40, 30)), dtype=np.uint8)
    edge = np.full((1, 40, 3), 100, np.uint8)
    noisy = np.full((1, 40, 3), 100, np.uint8)
    noisy[0, ::2] -= int(BORDER_STD)
    noisy[0, 1::2] += int(BORDER_STD)  # std exactly BORDER_STD, mean exactly the edge's
    shifted = np.full((1, 40, 3), 100 + int(BORDER_DIFF), np.uint8)
    for second in (noisy, shifted):
        image = Image.fromarray(np.concatenate([edge, second, content]))
        assert trim_border(image).size == (40, 30)


@pytest.mark.parametrize(("rows", "trimmed"), [(8, True), (6, False)])
def test_at_least_8_rows_or_columns_of_content_are_left(rows, trimmed):
    strip = photo(11, (40, rows))
    bar = (20 - rows) // 2
    tall = _padded(strip, bar, bar, 0, 0)  # trimmed rows only
    wide = _padded(strip.transpose(Image.Transpose.TRANSPOSE), 0, 0, bar, bar)  # columns only
    for image, content in ((tall, (40, rows)), (wide, (rows, 40))):
        out = trim_border(image)
        assert (out.size == content) if trimmed else (out is image)
