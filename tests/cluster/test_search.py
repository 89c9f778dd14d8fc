"""Candidate search on synthetic embeddings with planted near-duplicate groups."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.cluster.hash_candidates import phash_candidates
from dedup.cluster.ivf import ivf_search
from dedup.cluster.search import exact_search
from dedup.embed.hashing import hamming


def planted(n: int, d: int, groups: int, size: int, noise: float, seed: int = 0):
    """Random unit vectors; ``groups`` of them get ``size - 1`` noisy near-copies each."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    sources = rng.choice(n, size=groups, replace=False)
    free = np.setdiff1d(np.arange(n), sources)
    copies = rng.choice(free, size=groups * (size - 1), replace=False).reshape(groups, size - 1)
    for src, cps in zip(sources, copies, strict=True):
        x[cps] = x[src] + noise * np.linalg.norm(x[src]) * rng.standard_normal((len(cps), d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = set()
    for src, cps in zip(sources, copies, strict=True):
        members = sorted([int(src), *map(int, cps)])
        truth |= {(a, b) for t, a in enumerate(members) for b in members[t + 1 :]}
    return x, truth


def _pairs(c) -> set[tuple[int, int]]:
    return set(zip(c.i.tolist(), c.j.tolist(), strict=True))


def test_exact_and_ivf_find_planted_groups():
    x, truth = planted(20_000, 64, groups=300, size=4, noise=0.2)
    exact = _pairs(exact_search(x, k=8, threshold=0.9))
    assert truth <= exact
    approx = _pairs(ivf_search(x, k=8, threshold=0.9))
    assert len(truth & approx) / len(truth) >= 0.99
    assert len(exact & approx) / len(exact) >= 0.99  # approximate recall vs exact, at defaults


def test_ivf_probing_one_partition_loses_pairs_at_the_borders():
    # Probing several partitions is what carries recall: with one, pairs split across a border are lost.
    x, truth = planted(20_000, 64, groups=300, size=4, noise=0.35, seed=1)
    probed = _pairs(ivf_search(x, k=8, threshold=0.8, nlist=400))
    single = _pairs(ivf_search(x, k=8, threshold=0.8, nlist=400, nprobe=1))
    assert len(truth & probed) > len(truth & single)


def test_views_find_mirrored_copies():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    flip = lambda q: q[:, ::-1].copy()  # noqa: E731 - a view is any fixed permutation
    x[1] = x[0][::-1]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert (0, 1) not in _pairs(exact_search(x, 4, 0.99))
    assert (0, 1) in _pairs(exact_search(x, 4, 0.99, views=[flip]))
    assert (0, 1) in _pairs(ivf_search(x, 4, 0.99, views=[flip], nlist=4))


def test_cross_search_against_a_reference():
    x, _ = planted(2_000, 32, groups=0, size=1, noise=0.0)
    queries = x[:50] + 0.01 * np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = exact_search(x, 1, 0.95, queries=queries)
    assert sorted(zip(hits.i.tolist(), hits.j.tolist(), strict=True)) == [(q, q) for q in range(50)]


@pytest.mark.parametrize(("radius", "tables", "least"), [(3, 1, 1.0), (8, 1, 0.25), (8, 8, 0.85)])
def test_phash_candidates_are_exact_within_three_bits_and_find_most_beyond(radius, tables, least):
    rng = np.random.default_rng(radius)
    n = 5_000
    h = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    for a in range(0, 400, 2):  # plant pairs at distance `radius`
        bits = rng.choice(64, size=radius, replace=False)
        h[a + 1] = h[a] ^ np.bitwise_or.reduce(np.uint64(1) << bits.astype(np.uint64))
    i, j, d = phash_candidates(h, None, radius, tables=tables)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    planted_pairs = {(a, a + 1) for a in range(0, 400, 2)}
    assert np.all(d <= radius) and np.array_equal(d, hamming(h[i], h[j]))
    share = len(planted_pairs & found) / len(planted_pairs)
    assert share >= least


def test_the_sketch_loses_no_pair_above_the_threshold():
    # One partition: the sketched search compares every pair, so by its bound it must return exactly
    # the exact search's pairs and similarities, however few dimensions the sketch keeps.
    x, truth = planted(2_000, 96, groups=40, size=4, noise=0.3, seed=5)
    exact = exact_search(x, k=40, threshold=0.8)
    for r in (4, 16):  # 4: the bound passes nearly every pair, every row is ranked by real similarity
        sketched = ivf_search(x, k=40, threshold=0.8, nlist=1, reduce_dim=r)
        assert np.array_equal(sketched.i, exact.i) and np.array_equal(sketched.j, exact.j)
        assert np.array_equal(sketched.sim, exact.sim)
    assert truth <= _pairs(exact)


def test_sketched_partitions_keep_recall_and_views():
    x, truth = planted(20_000, 256, groups=300, size=4, noise=0.25, seed=6)
    exact = _pairs(exact_search(x, k=8, threshold=0.9))
    sketched = _pairs(ivf_search(x, k=8, threshold=0.9, reduce_dim=32))
    assert truth <= exact and len(exact & sketched) / len(exact) >= 0.99
    flip = lambda q: q[:, ::-1].copy()  # noqa: E731
    y = x.copy()
    y[1] = x[0][::-1]
    assert (0, 1) in _pairs(ivf_search(y, 4, 0.99, views=[flip], nlist=4, reduce_dim=32))
    assert (0, 1) not in _pairs(ivf_search(y, 4, 0.99, nlist=4, reduce_dim=32))
