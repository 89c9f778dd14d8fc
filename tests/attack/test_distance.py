"""Distances of attack.md §1 against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from attack.distance import calibrated_l2, l2, neighbourhood_l2, tiled_l2


def test_identical_images_score_zero():
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert l2(a, a) == 0 and tiled_l2(a, a) == 0


def test_l2_by_hand():
    a = np.zeros((4, 4, 3))
    b = np.zeros((4, 4, 3))
    b[0, 0, 0] = 1.0  # one of 48 values differs by 1: sqrt(1/48)
    assert l2(a, b) == pytest.approx(np.sqrt(1 / 48))
    assert l2(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)) == pytest.approx(1.0)


def test_tiled_l2_by_hand_and_at_least_l2():
    a = np.zeros((8, 8, 3))
    b = np.zeros((8, 8, 3))
    b[0:2, 0:2, :] = 0.5  # one 2x2 tile of the 4x4 grid entirely off by 0.5
    assert tiled_l2(a, b) == pytest.approx(0.5)
    assert l2(a, b) == pytest.approx(0.5 / 4)  # the same difference spread over 16 tiles
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = rng.random((2, 16, 16, 3))
        assert tiled_l2(x, y) >= l2(x, y) - 1e-12


def test_tiled_l2_catches_a_pair_that_differs_in_one_tile_only():
    rng = np.random.default_rng(2)
    a = rng.random((16, 16, 3))
    b = a.copy()
    b[4:8, 8:12] = rng.random((4, 4, 3))  # replace one tile
    assert l2(a, b) < 0.15 < tiled_l2(a, b)


def test_tiled_l2_needs_divisible_sizes():
    with pytest.raises(ValueError, match="4x4"):
        tiled_l2(np.zeros((10, 10, 3)), np.zeros((10, 10, 3)))


def test_calibrated_score_on_a_constructed_neighbourhood():
    # Training image 0 sits at distance 0.2 from each of its neighbours; a generation at distance
    # 0.02 from it scores 0.02 / (0.5 * 0.2) = 0.2.
    base = np.full((4, 4, 3), 0.5)
    train = [base]
    for i in range(6):
        t = base.copy()
        t[..., i % 3] += 0.2 if i < 3 else -0.2  # l2 = sqrt(0.04 * 16 / 48) = 0.2 / sqrt(3)
        train.append(t)
    train = np.stack(train)
    neigh, used = neighbourhood_l2(train, n=6)
    assert used == 6
    expected = 0.2 / np.sqrt(3)
    assert neigh[0] == pytest.approx(expected, rel=1e-5)
    g = base + 0.02
    score = calibrated_l2(l2(g, train[0]), neigh[0])
    assert score == pytest.approx(0.02 / (0.5 * expected), rel=1e-5)


def test_neighbourhood_uses_all_others_when_the_set_is_small():
    train = np.random.default_rng(3).random((5, 4, 4, 3))
    neigh, used = neighbourhood_l2(train, n=50)
    assert used == 4
    by_hand = [np.mean([l2(train[i], train[j]) for j in range(5) if j != i]) for i in range(5)]
    assert np.allclose(neigh, by_hand, rtol=1e-4)


def test_the_papers_constants():
    """attack.md §1-2 (paper §4.1, §4.2.1, §5.1): the settings every count depends on."""
    from attack import distance

    assert distance.NEIGHBOURS == 50 and distance.ALPHA == 0.5 and distance.GRID == 4
    assert distance.DELTA == 0.15 and distance.CALIBRATED_THRESHOLDS == (1 / 3, 0.5, 1.0)


@pytest.mark.parametrize("shape", [(8, 10, 3), (10, 8, 3)])
def test_tiled_l2_refuses_either_side_not_divisible(shape):
    with pytest.raises(ValueError, match="4x4"):
        tiled_l2(np.zeros(shape), np.zeros(shape))


def _brute_neighbourhood(train: np.ndarray, n: int) -> np.ndarray:
    out = []
    for i in range(len(train)):
        d = sorted(l2(train[i], train[j]) for j in range(len(train)) if j != i)
        out.append(np.mean(d[:n]))
    return np.array(out)


@pytest.mark.parametrize(("count", "n"), [(2, 50), (3, 50), (6, 2), (7, 1)])
def test_neighbourhood_matches_brute_force(count, n):
    train = np.random.default_rng(count).random((count, 4, 4, 3))
    neigh, used = neighbourhood_l2(train, n=n)
    assert used == min(n, count - 1)
    assert np.allclose(neigh, _brute_neighbourhood(train, used), rtol=1e-4)


def test_neighbourhood_with_exact_twins_drops_one_entry_per_image():
    """Five identical images: the search may list twins before an image itself; each image still
    averages over exactly n others."""
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 4, 3)), rng.random((4, 4, 3))
    train = np.stack([a] * 5 + [b])
    neigh, used = neighbourhood_l2(train, n=1)
    assert used == 1 and np.allclose(neigh[:5], 0.0, atol=1e-6)
    assert neigh[5] == pytest.approx(float(l2(b, a)), rel=1e-4)


def test_a_single_training_image_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        neighbourhood_l2(np.zeros((1, 4, 4, 3)))
