"""Candidate pairs: every pair of samples similar enough to be worth a duplicate decision.

Two embedding searches, chosen by N (``search: auto``):

* ``exact``: FAISS flat inner-product search over all vectors, queries in blocks (GPU index when
  faiss has GPUs). Finds the true top-k.
* ``ivf``: the partitioned search of SemDeDup / NeMo: spherical k-means into ``nlist`` partitions,
  then exact search (one GEMM per partition) of each point against the members of its ``nprobe``
  nearest partitions. Probing more than one partition is the multi-assignment at the borders that
  keeps recall of near-duplicate pairs at >= 0.99 of the exact search; bench/cluster.py measures it.
  Wide vectors are partitioned and compared in a PCA sketch of ``reduce_dim`` dimensions with a bound
  that loses no pair above the threshold (``Sketch``), then every candidate is rescored exactly.

Queries can come in several views of the same points (a mirrored descriptor, for flipped copies);
each view is searched and a pair keeps its best similarity.

Perceptual hashes get their own candidates by multi-index hashing: the 64 bits in four 16-bit
chunks, and two hashes within distance 3 share a chunk exactly (pigeonhole); further bit orders
catch most pairs at larger distances. Buckets larger than a cap are degenerate hashes (flat images)
and are skipped, which keeps the join linear in N. Pairs farther apart in hash space still reach
the decision through the embedding search, which scores every candidate with both signals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl
from tqdm import tqdm

from dedup.embed.hashing import hamming

View = Callable[[np.ndarray], np.ndarray]


@dataclass
class Candidates:
    """Unordered pairs (i < j) of row indices with their best cosine similarity."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.i)


def _merge(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], symmetric: bool) -> Candidates:
    """Concatenate (query, base, sim) hits; keep each pair once with its best similarity.

    ``symmetric``: queries and base are the same points, so (a, b) and (b, a) are one pair (i < j).
    """
    if not parts:
        return Candidates.empty()
    i = np.concatenate([p[0] for p in parts]).astype(np.int64)
    j = np.concatenate([p[1] for p in parts]).astype(np.int64)
    s = np.concatenate([p[2] for p in parts]).astype(np.float32)
    if symmetric:
        keep = i != j
        i, j, s = np.minimum(i, j)[keep], np.maximum(i, j)[keep], s[keep]
    if not len(i):
        return Candidates.empty()
    df = pl.DataFrame({"i": i, "j": j, "sim": s}).group_by("i", "j").agg(pl.col("sim").max()).sort("i", "j")
    return Candidates(df["i"].to_numpy(), df["j"].to_numpy(), df["sim"].to_numpy())


def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _rows(x: np.ndarray, idx: np.ndarray | slice, view: View | None = None) -> np.ndarray:
    out = np.ascontiguousarray(x[idx], dtype=np.float32)
    return np.ascontiguousarray(view(out), dtype=np.float32) if view is not None else out


def exact_search(
    base: np.ndarray,
    k: int,
    threshold: float,
    queries: np.ndarray | None = None,
    views: Sequence[View] = (),
    block_size: int = 16_384,
    progress: bool = False,
    mapper: Mapper | None = None,
) -> Candidates:
    """Top-k neighbours with similarity >= threshold by exhaustive inner product (FAISS flat).

    Without ``queries`` the base is searched against itself and pairs come back unordered (i < j);
    with them, pairs are (query row, base row). ``mapper`` runs groups of query blocks (an executor's
    ``map``: Ray tasks); each block's hits are the same wherever it runs, and the merge sorts them.
    """
    symmetric = queries is None
    q_all = base if queries is None else queries
    n = base.shape[0]
    if n == 0 or len(q_all) == 0 or (symmetric and n < 2):
        return Candidates.empty()
    kk = min(k + int(symmetric), n)
    steps = [(v, lo) for v in range(1 + len(views)) for lo in range(0, len(q_all), block_size)]
    shared = {
        "base": _shareable(base),
        "queries": None if symmetric else _shareable(q_all),
        "views": list(views),
        "kk": kk,
        "threshold": threshold - SIM_MARGIN,
        "block_size": block_size,
        "progress": progress and _in_process(mapper),
    }
    cand = _merge(_run(_exact_blocks, steps, shared, mapper), symmetric)
    return _rescored(cand, base, q_all, views, threshold)


def _exact_blocks(shared: dict, steps: list[tuple[int, int]]) -> list[tuple[np.ndarray, ...]]:
    """One task: a flat index over the whole base, searched with some query blocks."""
    import faiss

    base = _opened(shared["base"])
    q_all = base if shared["queries"] is None else _opened(shared["queries"])
    n, d = base.shape
    bs = shared["block_size"]
    index = faiss.IndexFlatIP(d)
    if _gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
    for lo in range(0, n, bs):
        index.add(_rows(base, slice(lo, min(n, lo + bs))))
    kk, threshold, views = shared["kk"], shared["threshold"], [None, *shared["views"]]
    parts = []
    for v, lo in tqdm(steps, desc="search", unit="block", disable=not shared["progress"]):
        q = _rows(q_all, slice(lo, min(len(q_all), lo + bs)), views[v])
        sims, idx = index.search(q, kk)
        rows = np.repeat(np.arange(lo, lo + len(q)), kk)
        sims, idx = sims.ravel(), idx.ravel()
        ok = (idx >= 0) & (sims >= threshold)
        parts.append((rows[ok], idx[ok], sims[ok]))
    return parts


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
        gpu=_gpu_available(),
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
        _, i = index.search(_rows(x, slice(lo, min(len(x), lo + block_size)), view), probes)
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
        rows = _rows(x, pick[lo : lo + 65_536]).astype(np.float64)
        second += rows.T @ rows
    _, vectors = np.linalg.eigh(second)
    basis = vectors[:, ::-1][:, :r]
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(r)] < 0, -1.0, 1.0)  # fixed signs
    return np.ascontiguousarray(basis, dtype=np.float32)


def _sketch(x: np.ndarray, basis: np.ndarray, block_size: int, view: View | None = None) -> Sketch:
    rows = np.empty((len(x), basis.shape[1]), dtype=np.float16)
    residual = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), block_size):
        full = _rows(x, slice(lo, min(len(x), lo + block_size)), view)
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
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, KMEANS_ROWS_PER_CENTROID * nlist), replace=False))
    basis = _basis(base, reduce_dim, pick) if reduce_dim and base.shape[1] > reduce_dim else None
    b_view = _sketch(base, basis, block_size) if basis is not None else None
    b_rows = base if b_view is None else b_view.rows
    centroids = _kmeans_rows(_rows(b_rows, pick), nlist, seed)
    base_probes = _nearest_centroids(b_rows, centroids, nprobe, block_size)
    home = base_probes[:, 0]
    b_order = np.argsort(home, kind="stable")
    b_bounds = np.searchsorted(home[b_order], np.arange(nlist + 1))
    kk = k + int(symmetric)
    parts = []
    for view in [None, *views]:
        if basis is None:
            q_sketch, q_rows, apply = None, q_all, view
        else:
            q_sketch = b_view if symmetric and view is None else _sketch(q_all, basis, block_size, view)
            q_rows, apply = q_sketch.rows, None
        probes = (
            base_probes
            if symmetric and view is None
            else _nearest_centroids(q_rows, centroids, nprobe, block_size, apply)
        )
        q_part = probes.ravel()
        q_row = np.repeat(np.arange(len(q_all)), nprobe)
        q_order = np.argsort(q_part, kind="stable")
        q_bounds = np.searchsorted(q_part[q_order], np.arange(nlist + 1))
        # partition assignment done: each partition's queries and members are independent work
        shared = {
            "base": _shareable(b_rows),
            "queries": _shareable(q_rows) if not symmetric or (basis is not None and view) else None,
            "view": apply,
            "residuals": None if basis is None else (b_view.residual, q_sketch.residual),
            "full": None
            if basis is None
            else (_shareable(base), None if symmetric else _shareable(q_all), view),
            "members": [b_order[b_bounds[p] : b_bounds[p + 1]] for p in range(nlist)],
            "asked": [q_row[q_order[q_bounds[p] : q_bounds[p + 1]]] for p in range(nlist)],
            "kk": kk,
            "threshold": threshold - SIM_MARGIN - (SKETCH_SLACK if basis is not None else 0.0),
            "progress": progress and _in_process(mapper),
        }
        parts += _run(_partition_hits, list(range(nlist)), shared, mapper)
    return _rescored(_merge(parts, symmetric), base, q_all, views, threshold)


def _partition_hits(shared: dict, partitions: list[int]) -> list[tuple[np.ndarray, ...]]:
    """One task: each partition's queries against its members, one GEMM per 4,096 queries."""
    base = _opened(shared["base"])
    q_all = base if shared["queries"] is None else _opened(shared["queries"])
    view, kk, threshold = shared["view"], shared["kk"], shared["threshold"]
    residuals, full = shared["residuals"], shared["full"]
    if full is not None:
        full_base = _opened(full[0])
        full_q = full_base if full[1] is None else _opened(full[1])
    parts = []
    for p in tqdm(partitions, desc="search", unit="part", disable=not shared["progress"]):
        qs, ms = shared["asked"][p], shared["members"][p]
        if not len(qs) or not len(ms):
            continue
        m = _rows(base, ms)
        for lo in range(0, len(qs), 4096):
            chunk = qs[lo : lo + 4096]
            sims = _rows(q_all, chunk, view) @ m.T
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
        sims[crowded] = _rows(full_q, chunk[crowded], view) @ _rows(full_base, ms).T
    return sims


# A GEMM's last bits depend on how BLAS splits it over threads, which differs between a laptop, a
# Ray worker (one thread) and a GPU. Candidates are found with this much slack, then every pair's
# similarity is recomputed by one fixed-order dot product and the real threshold applied, so the
# pairs and their similarities are the same wherever the search ran.
SIM_MARGIN = 1e-3


def _rescored(
    cand: Candidates, base: np.ndarray, queries: np.ndarray, views: Sequence[View], threshold: float
) -> Candidates:
    if not len(cand):
        return cand
    sims = np.full(len(cand), -np.inf, dtype=np.float32)
    for lo in range(0, len(cand), 65_536):
        b = _rows(base, cand.j[lo : lo + 65_536])
        for view in [None, *views]:
            q = _rows(queries, cand.i[lo : lo + 65_536], view)
            sims[lo : lo + 65_536] = np.maximum(sims[lo : lo + 65_536], np.einsum("ij,ij->i", q, b))
    keep = sims >= threshold
    return Candidates(cand.i[keep], cand.j[keep], sims[keep])


# -- running the search's independent pieces on an executor --


class Mapper(Protocol):
    """What the search needs of an executor (``dedup.core.executors``): an ordered map and its width."""

    parallelism: int

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]: ...


def _run(fn: Callable[[Any, Any], Any], items: list[Any], shared: Any, mapper: Mapper | None) -> list[Any]:
    """``fn(shared, group)`` over contiguous groups of items, flattened in order: one group in this
    process without an executor, a few per worker with one (a task has a fixed cost). Grouping
    changes where the work runs, never a result."""
    if not items:
        return []
    if _in_process(mapper):
        return fn(shared, items)
    n = min(len(items), 4 * mapper.parallelism)  # type: ignore[union-attr]
    size = -(-len(items) // n)
    groups = [items[i : i + size] for i in range(0, len(items), size)]
    return [part for group in mapper.map(fn, groups, shared) for part in group]  # type: ignore[union-attr]


def _in_process(mapper: Mapper | None) -> bool:
    """No executor, or one that runs one piece at a time here: one piece, with its progress bar."""
    return mapper is None or mapper.parallelism <= 1


def _shareable(x: np.ndarray) -> Any:
    """A memory-mapped array travels as its path (workers map it; the work dir is shared), anything
    else as the array."""
    import mmap

    # only the memmap itself: a slice of one keeps the parent's offset attribute, not its own
    if isinstance(x, np.memmap) and x.filename and x.flags.c_contiguous and isinstance(x.base, mmap.mmap):
        return ("memmap", str(x.filename), x.dtype.str, tuple(x.shape), int(x.offset))
    return np.asarray(x)


def _opened(x: Any) -> np.ndarray:
    if isinstance(x, tuple) and x and x[0] == "memmap":
        _, path, dtype, shape, offset = x
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset)
    return x


def search(
    base: np.ndarray,
    k: int,
    threshold: float,
    method: str,
    queries: np.ndarray | None = None,
    views: Sequence[View] = (),
    exact_max: int = 50_000,
    nlist: int | None = None,
    nprobe: int = 8,
    block_size: int = 16_384,
    progress: bool = False,
    mapper: Mapper | None = None,
    reduce_dim: int | None = 128,
) -> tuple[Candidates, str]:
    """Dispatch on ``method`` (auto: exact up to ``exact_max`` vectors); returns the method used."""
    used = method if method != "auto" else ("exact" if len(base) <= exact_max else "ivf")
    if used == "exact":
        return exact_search(base, k, threshold, queries, views, block_size, progress, mapper), used
    cand = ivf_search(
        base,
        k,
        threshold,
        queries,
        views,
        nlist,
        nprobe,
        block_size,
        progress=progress,
        mapper=mapper,
        reduce_dim=reduce_dim,
    )
    return cand, used


def _permute_bits(h: np.ndarray, perm: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(h.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    packed = np.ascontiguousarray(np.packbits(bits[:, perm], axis=1))
    return packed.view(">u8").ravel().astype(np.uint64)


def phash_candidates(
    hashes: np.ndarray, mirrors: np.ndarray | None, radius: int, tables: int = 8, bucket_cap: int = 2000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) whose perceptual hashes (or one's mirror) are within ``radius`` bits.

    Returns (i, j, distance). Multi-index hashing: the 64 bits in four 16-bit chunks, in ``tables``
    fixed bit orders (the first is the natural one). Pairs within 3 bits always share a chunk; beyond
    that each extra table is another chance (planted 8-bit pairs: 0.27 of them found by one
    table, 0.95 by eight; at 10 bits 0.16 and 0.8; tests/cluster/test_search.py).
    """
    h = hashes.astype(np.uint64)
    n = len(h)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    rng = np.random.default_rng(0)
    perms = [np.arange(64)] + [rng.permutation(64) for _ in range(tables - 1)]
    rows = np.arange(n)

    def chunks(v: np.ndarray) -> pl.DataFrame:
        frames = []
        for t, perm in enumerate(perms):
            w = v if t == 0 else _permute_bits(v, perm)
            for c in range(4):
                frames.append(
                    pl.DataFrame(
                        {
                            "row": rows,
                            "c": np.full(n, 4 * t + c, np.int16),
                            "v": ((w >> np.uint64(16 * c)) & np.uint64(0xFFFF)).astype(np.int32),
                        }
                    )
                )
        return pl.concat(frames)

    base = chunks(h)
    sizes = base.group_by("c", "v").len()
    base = base.join(sizes.filter(pl.col("len") <= bucket_cap).drop("len"), on=["c", "v"])
    queries = [base] if mirrors is None else [base, chunks(mirrors.astype(np.uint64))]
    pairs = (
        pl.concat(queries)
        .rename({"row": "q"})
        .join(base, on=["c", "v"])
        .filter(pl.col("q") != pl.col("row"))
        .select(pl.min_horizontal("q", "row").alias("i"), pl.max_horizontal("q", "row").alias("j"))
        .unique()
        .sort("i", "j")
    )
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    dist = pair_phash_distance(h, mirrors, i, j)
    ok = dist <= radius
    return i[ok], j[ok], dist[ok]


def pair_cosine(
    x: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    mirror: Callable[[np.ndarray], np.ndarray] | None = None,
    block: int = 65_536,
) -> np.ndarray:
    """Cosine of each pair (the better orientation with a mirror view), in float32 blocks."""
    out = np.zeros(len(i), dtype=np.float32)
    for lo in range(0, len(i), block):
        a = np.asarray(x[i[lo : lo + block]], dtype=np.float32)
        b = np.asarray(x[j[lo : lo + block]], dtype=np.float32)
        sims = np.einsum("ij,ij->i", a, b)
        if mirror is not None:
            sims = np.maximum(sims, np.einsum("ij,ij->i", mirror(a), b))
        out[lo : lo + block] = sims
    return out


def pair_phash_distance(
    hashes: np.ndarray, mirrors: np.ndarray | None, i: np.ndarray, j: np.ndarray
) -> np.ndarray:
    """Hamming distance per pair: the smaller of straight and mirrored when mirror hashes are given."""
    h = hashes.astype(np.uint64)
    d = hamming(h[i], h[j])
    if mirrors is not None:
        d = np.minimum(d, hamming(mirrors.astype(np.uint64)[i], h[j]))
    return d
