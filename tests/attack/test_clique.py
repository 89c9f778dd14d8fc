"""Largest clique on constructed graphs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attack.clique import largest_clique


def _graph(n: int, edges) -> np.ndarray:
    a = np.zeros((n, n), dtype=bool)
    for i, j in edges:
        a[i, j] = a[j, i] = True
    return a


def test_known_small_graphs():
    assert largest_clique(np.zeros((0, 0), bool)) == []
    assert largest_clique(np.zeros((4, 4), bool)) == [0]  # no edges: any single vertex
    # a triangle and a disjoint square with one diagonal: the triangles {0,1,2} and {3,4,5}
    a = _graph(7, [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (5, 6), (6, 3), (3, 5)])
    assert len(largest_clique(a)) == 3
    k5 = _graph(8, [*itertools.combinations(range(2, 7), 2), (0, 1), (1, 2), (7, 0)])
    assert largest_clique(k5) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("seed", range(5))
def test_planted_clique_in_a_random_graph_is_found_exactly(seed):
    rng = np.random.default_rng(seed)
    n = 300
    a = np.triu(rng.random((n, n)) < 0.03, 1)
    a = a | a.T
    planted = sorted(rng.choice(n, size=11, replace=False).tolist())
    for i, j in itertools.combinations(planted, 2):
        a[i, j] = a[j, i] = True
    found = largest_clique(a)
    assert found == planted
    assert all(a[i, j] for i, j in itertools.combinations(found, 2))


def test_matches_brute_force_on_small_random_graphs():
    rng = np.random.default_rng(9)
    for _ in range(30):
        n = int(rng.integers(2, 11))
        a = np.triu(rng.random((n, n)) < 0.5, 1)
        a = a | a.T
        best = max(
            (
                len(c)
                for r in range(1, n + 1)
                for c in itertools.combinations(range(n), r)
                if all(a[i, j] for i, j in itertools.combinations(c, 2))
            ),
            default=1,
        )
        assert len(largest_clique(a)) == best
