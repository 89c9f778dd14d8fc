"""The arms' quality measures (#26 item 4): KID's estimator against its definition, pixel features,
and the held-out loss curve written by a tiny real training."""

from __future__ import annotations

import numpy as np
import pytest

from attack.quality import kid, pixel_features, pixel_kid


def _brute_kid(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]

    def k(x, y):
        return (x @ y / d + 1) ** 3

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_and_separates_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.random((9, 5)), rng.random((7, 5))
    assert kid(a, b) == pytest.approx(_brute_kid(a, b))
    same = [kid(rng.random((200, 12)), rng.random((200, 12))) for _ in range(5)]
    assert abs(np.mean(same)) < 0.01  # unbiased: about zero for one distribution
    shifted = kid(rng.random((200, 12)), rng.random((200, 12)) * 0.5)
    assert shifted > 10 * max(abs(v) for v in same)
    assert kid(a[:1], b) is None


def test_pixel_features_are_area_means():
    img = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    img[0, :8, :8] = 255  # one bright quarter
    f = pixel_features(img)
    assert f.shape == (2, 8 * 8 * 3)
    grid = f[0].reshape(8, 8, 3)
    assert grid[:4, :4].min() == 1.0 and grid[4:, :].max() == 0.0 and f[1].max() == 0.0
    assert pixel_features(np.zeros((1, 12, 12, 3), dtype=np.uint8)).shape == (1, 6 * 6 * 3)
    assert pixel_kid(img.repeat(3, 0), img.repeat(3, 0)) is not None
