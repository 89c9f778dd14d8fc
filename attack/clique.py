"""The largest clique of a small undirected graph, exactly (generate-and-filter, attack.md §3).

Bron-Kerbosch with Tomita pivoting over Python-int bitsets, with a size bound: a branch is cut as
soon as it cannot beat the best clique found. For the graphs generate-and-filter builds (K <= 500
generations, edges only between near-identical images) this is fast; it is exact on any graph.
"""

from __future__ import annotations

import numpy as np


def _bits(x: int) -> list[int]:
    out = []
    while x:
        low = x & -x
        out.append(low.bit_length() - 1)
        x ^= low
    return out


def largest_clique(adjacency: np.ndarray) -> list[int]:
    """Vertices of a maximum clique of the graph with boolean ``adjacency`` (symmetric, diagonal ignored)."""
    n = len(adjacency)
    if n == 0:
        return []
    adj = np.asarray(adjacency, dtype=bool).copy()
    np.fill_diagonal(adj, False)
    if not adj.any():
        return [0]
    neighbours = [int("".join("1" if v else "0" for v in row[::-1]), 2) for row in adj]
    best: list[int] = []

    def expand(clique: list[int], candidates: int, excluded: int) -> None:
        nonlocal best
        if not candidates and not excluded:
            if len(clique) > len(best):
                best = list(clique)
            return
        if len(clique) + candidates.bit_count() <= len(best):
            return
        pool = candidates | excluded
        pivot = max(_bits(pool), key=lambda u: (candidates & neighbours[u]).bit_count())
        for v in _bits(candidates & ~neighbours[pivot]):
            if len(clique) + candidates.bit_count() <= len(best):
                return
            clique.append(v)
            expand(clique, candidates & neighbours[v], excluded & neighbours[v])
            clique.pop()
            candidates &= ~(1 << v)
            excluded |= 1 << v

    expand([], (1 << n) - 1, 0)
    return sorted(best)
