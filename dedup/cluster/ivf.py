"""The partitioned embedding search of SemDeDup / NeMo: spherical k-means into ``nlist`` partitions,
then exact search (one GEMM per partition) of each point against the members of its ``nprobe``
nearest partitions. Probing more than one partition is the multi-assignment at the borders that
keeps recall of near-duplicate pairs at >= 0.99 of the exact search; bench/cluster.py measures it.
Wide vectors are partitioned and compared in a PCA sketch of ``reduce_dim`` dimensions with a bound
that loses no pair above the threshold (``Sketch``), then every candidate is rescored exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from dedup.cluster.search import (
    SIM_MARGIN,
    Candidates,
    Mapper,
    View,
    gpu_available,
    in_process,
    merge_parts,
    opened,
    rescored,
    rows_of,
    run_mapped,
    shareable,
)

# k-means trains on this many sampled rows per partition (FAISS caps what it uses at the same number).
KMEANS_ROWS_PER_CENTROID = 40


def default_nlist(n: int, nlist: int | None = None) -> int:
    """Partitions for n vectors: ``nlist`` if given, else about 2 sqrt(n); at most n/16, so a partition
    averages 16 members or more."""
    return min(nlist or max(1, round(2 * np.sqrt(n))), max(1, n // 16))


def _kmeans_rows(
    sample: np.ndarray, nlist: int, seed: int, per_centroid: int = KMEANS_ROWS_PER_CENTROID
) -> np.ndarray:
    """Spherical k-means centroids of the sampled rows (``per_centroid * nlist`` of them, drawn by the
    caller)."""
    import faiss

    km = faiss.Kmeans(
        sample.shape[1],
        nlist,
        niter=10,
        seed=seed,
        spherical=True,
        gpu=gpu_available(),
        verbose=False,
        max_points_per_centroid=per_centroid,
    )
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def _nearest_centroids(
    x: np.ndarray, centroids: np.ndarray, probes: int, block_size: int, view: View | None = None
) -> np.ndarray:
    """(n, probes) indices of each row's nearest centroids, best first."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    out = []
    for lo in range(0, len(x), block_size):
        _, i = index.search(rows_of(x, slice(lo, min(len(x), lo + block_size)), view), probes)
        out.append(i)
    return np.concatenate(out)


# float16 sketch rows change a dot product by at most ~2^-10 of |Px||Py| <= 1 (relative rounding 2^-11
# on each side): this much more slack keeps the bound a bound.
SKETCH_SLACK = 1e-3


@dataclass(frozen=True)
class Sketch:
    """Vectors seen through the top ``r`` principal directions of their second moment.

    For any x, y split as projection plus residual, x.y = Px.Py + Rx.Ry <= Px.Py + |Rx||Ry|
    (Cauchy-Schwarz), so every pair at cosine >= t has Px.Py + |Rx||Ry| >= t: searching the sketch
    with that upper bound loses no pair, at r/d of the cost. Uncentred PCA maximises the energy the
    sketch keeps, which is what makes the residuals, and so the false candidates, small. Rows are
    float16 (a quarter of the float32 vectors' bytes), residual norms float32.
    """

    rows: np.ndarray
    residual: np.ndarray


def _basis(x: np.ndarray, r: int, pick: np.ndarray) -> np.ndarray:
    """(d, r) orthonormal top principal directions of the sampled rows' second moment."""
    second = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for lo in range(0, len(pick), 65_536):
        rows = rows_of(x, pick[lo : lo + 65_536]).astype(np.float64)
        second += rows.T @ rows
    _, vectors = np.linalg.eigh(second)
    basis = vectors[:, ::-1][:, :r]
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(r)] < 0, -1.0, 1.0)  # fixed signs
    return np.ascontiguousarray(basis, dtype=np.float32)


def _sketch(x: np.ndarray, basis: np.ndarray, block_size: int, view: View | None = None) -> Sketch:
    rows = np.empty((len(x), basis.shape[1]), dtype=np.float16)
    residual = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), block_size):
        full = rows_of(x, slice(lo, min(len(x), lo + block_size)), view)
        proj = full @ basis
        rows[lo : lo + len(full)] = proj
        left = np.einsum("ij,ij->i", full, full) - np.einsum("ij,ij->i", proj, proj)
        residual[lo : lo + len(full)] = np.sqrt(np.maximum(left, 0.0))
    return Sketch(rows, residual)


def _topk_hits(sims: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of each row's top-k entries that reach the threshold.

    Thresholding first: near-duplicates are rare, so almost every row has fewer than k hits and
    only the few crowded rows need sorting.
    """
    r, c = np.nonzero(sims >= threshold)
    if not len(r):
        return r, c
    counts = np.bincount(r, minlength=sims.shape[0])
    crowded = counts > k
    if not crowded.any():
        return r, c
    keep = ~crowded[r]
    extra_r, extra_c = [], []
    for row in np.flatnonzero(crowded):
        cols = c[r == row]
        best = cols[np.argsort(-sims[row, cols], kind="stable")[:k]]
        extra_r.append(np.full(len(best), row))
        extra_c.append(best)
    return np.concatenate([r[keep], *extra_r]), np.concatenate([c[keep], *extra_c])


def ivf_search(
    base: np.ndarray,
    k: int,
    threshold: float,
    queries: np.ndarray | None = None,
    views: Sequence[View] = (),
    nlist: int | None = None,
    nprobe: int = 8,
    block_size: int = 16_384,
    seed: int = 0,
    progress: bool = False,
    mapper: Mapper | None = None,
    reduce_dim: int | None = 128,
) -> Candidates:
    """Partitioned search: every base vector lives in its nearest k-means partition; every query is
    compared, with one GEMM per partition, to the members of its ``nprobe`` nearest partitions.

    Probing several partitions is the multi-assignment at the borders that keeps near-duplicate pairs
    from being split by a partition boundary (bench/cluster.py measures the recall it buys). Vectors
    wider than ``reduce_dim`` are partitioned and compared in their ``Sketch`` (no pair lost by it;
    a row crowded by the bound is ranked by its real similarities), and the candidates rescored exactly.
    """
    symmetric = queries is None
    q_all = base if queries is None else queries
    n = len(base)
    if n == 0 or len(q_all) == 0 or (symmetric and n < 2):
        return Candidates.empty()
    nlist = default_nlist(n, nlist)
    nprobe = min(nprobe, nlist)
    basis, b_view, centroids, base_probes = _partitions(base, nlist, nprobe, reduce_dim, block_size, seed)
    b_rows = base if b_view is None else b_view.rows
    members = _by_partition(base_probes[:, :1], nlist)  # each base vector in its nearest partition
    parts = []
    for view in [None, *views]:
        q_sketch, q_rows, apply = _query_rows(q_all, view, basis, b_view if symmetric else None, block_size)
        probes = (
            base_probes
            if symmetric and view is None
            else _nearest_centroids(q_rows, centroids, nprobe, block_size, apply)
        )
        # partition assignment done: each partition's queries and members are independent work
        shared = {
            "base": shareable(b_rows),
            "queries": shareable(q_rows) if not symmetric or (basis is not None and view) else None,
            "view": apply,
            "residuals": None if basis is None else (b_view.residual, q_sketch.residual),
            "full": None
            if basis is None
            else (shareable(base), None if symmetric else shareable(q_all), view),
            "members": members,
            "asked": _by_partition(probes, nlist),
            "kk": k + int(symmetric),
            "threshold": threshold - SIM_MARGIN - (SKETCH_SLACK if basis is not None else 0.0),
            "progress": progress and in_process(mapper),
        }
        parts += run_mapped(_partition_hits, list(range(nlist)), shared, mapper)
    return rescored(merge_parts(parts, symmetric), base, q_all, views, threshold)


def _partitions(
    base: np.ndarray, nlist: int, nprobe: int, reduce_dim: int | None, block_size: int, seed: int
) -> tuple[np.ndarray | None, Any, np.ndarray, np.ndarray]:
    """(sketch basis or None, the base's sketch or None, centroids, each base row's ``nprobe``
    nearest partitions): k-means on a seeded sample of the rows, in the sketch when one is used."""
    n = len(base)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, KMEANS_ROWS_PER_CENTROID * nlist), replace=False))
    basis = _basis(base, reduce_dim, pick) if reduce_dim and base.shape[1] > reduce_dim else None
    b_view = _sketch(base, basis, block_size) if basis is not None else None
    b_rows = base if b_view is None else b_view.rows
    centroids = _kmeans_rows(rows_of(b_rows, pick), nlist, seed)
    return basis, b_view, centroids, _nearest_centroids(b_rows, centroids, nprobe, block_size)


def _query_rows(
    q_all: np.ndarray, view: View | None, basis: np.ndarray | None, base_sketch: Any, block_size: int
) -> tuple[Any, Any, View | None]:
    """(the queries' sketch or None, the rows to compare, the view still to apply to them): in the
    sketch the view is applied before sketching; the symmetric search's unviewed queries are the
    base's own sketch (``base_sketch``), not sketched twice."""
    if basis is None:
        return None, q_all, view
    q_sketch = (
        base_sketch if base_sketch is not None and view is None else _sketch(q_all, basis, block_size, view)
    )
    return q_sketch, q_sketch.rows, None


def _by_partition(probes: np.ndarray, nlist: int) -> list[np.ndarray]:
    """Per partition, the rows whose probes (one row of ``probes`` each) include it, in row order."""
    part = probes.ravel()
    row = np.repeat(np.arange(len(probes)), probes.shape[1])
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(nlist + 1))
    return [row[order[bounds[p] : bounds[p + 1]]] for p in range(nlist)]


def _partition_hits(shared: dict, partitions: list[int]) -> list[tuple[np.ndarray, ...]]:
    """One task: each partition's queries against its members, one GEMM per 4,096 queries."""
    base = opened(shared["base"])
    q_all = base if shared["queries"] is None else opened(shared["queries"])
    view, kk, threshold = shared["view"], shared["kk"], shared["threshold"]
    residuals, full = shared["residuals"], shared["full"]
    if full is not None:
        full_base = opened(full[0])
        full_q = full_base if full[1] is None else opened(full[1])
    parts = []
    for p in tqdm(partitions, desc="search", unit="part", disable=not shared["progress"]):
        qs, ms = shared["asked"][p], shared["members"][p]
        if not len(qs) or not len(ms):
            continue
        m = rows_of(base, ms)
        for lo in range(0, len(qs), 4096):
            chunk = qs[lo : lo + 4096]
            sims = rows_of(q_all, chunk, view) @ m.T
            if residuals is not None:
                sims = _bounded(sims, residuals, chunk, ms, kk, threshold, full_base, full_q, full[2])
            r, c = _topk_hits(sims, kk, threshold)
            parts.append((chunk[r], ms[c], sims[r, c]))
    return parts


def _bounded(
    sims: np.ndarray,
    residuals: tuple[np.ndarray, np.ndarray],
    chunk: np.ndarray,
    ms: np.ndarray,
    kk: int,
    threshold: float,
    full_base: np.ndarray,
    full_q: np.ndarray,
    view: View | None,
) -> np.ndarray:
    """Sketch similarities made upper bounds of the full ones; a row with more than ``kk`` entries
    over the threshold gets its real similarities instead, so its top-k is ranked by them (a pair
    at the threshold passes the bound, so nothing the real row keeps is lost)."""
    sims += residuals[1][chunk][:, None] * residuals[0][ms][None, :]
    crowded = np.flatnonzero(np.count_nonzero(sims >= threshold, axis=1) > kk)
    if len(crowded):
        sims[crowded] = rows_of(full_q, chunk[crowded], view) @ rows_of(full_base, ms).T
    return sims
