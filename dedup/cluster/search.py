"""Candidate pairs: every pair of samples similar enough to be worth a duplicate decision.

Two embedding searches, chosen by N (``search: auto``):

* ``exact``: FAISS flat inner-product search over all vectors, queries in blocks (GPU index when
  faiss has GPUs). Finds the true top-k.
* ``ivf``: the partitioned search of SemDeDup / NeMo (dedup/cluster/ivf.py).

Queries can come in several views of the same points (a mirrored descriptor, for flipped copies);
each view is searched and a pair keeps its best similarity. Perceptual hashes get their own
candidates (dedup/cluster/hash_candidates.py). The blocks and partitions of either search run on
the executor (``Mapper``); the helpers for that live here, beside the candidate table they fill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl
from tqdm import tqdm

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


def merge_parts(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], symmetric: bool) -> Candidates:
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


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def rows_of(x: np.ndarray, idx: np.ndarray | slice, view: View | None = None) -> np.ndarray:
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
        "base": shareable(base),
        "queries": None if symmetric else shareable(q_all),
        "views": list(views),
        "kk": kk,
        "threshold": threshold - SIM_MARGIN,
        "block_size": block_size,
        "progress": progress and in_process(mapper),
    }
    cand = merge_parts(run_mapped(_exact_blocks, steps, shared, mapper), symmetric)
    return rescored(cand, base, q_all, views, threshold)


def _exact_blocks(shared: dict, steps: list[tuple[int, int]]) -> list[tuple[np.ndarray, ...]]:
    """One task: a flat index over the whole base, searched with some query blocks."""
    import faiss

    base = opened(shared["base"])
    q_all = base if shared["queries"] is None else opened(shared["queries"])
    n, d = base.shape
    bs = shared["block_size"]
    index = faiss.IndexFlatIP(d)
    if gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
    for lo in range(0, n, bs):
        index.add(rows_of(base, slice(lo, min(n, lo + bs))))
    kk, threshold, views = shared["kk"], shared["threshold"], [None, *shared["views"]]
    parts = []
    for v, lo in tqdm(steps, desc="search", unit="block", disable=not shared["progress"]):
        q = rows_of(q_all, slice(lo, min(len(q_all), lo + bs)), views[v])
        sims, idx = index.search(q, kk)
        rows = np.repeat(np.arange(lo, lo + len(q)), kk)
        sims, idx = sims.ravel(), idx.ravel()
        ok = (idx >= 0) & (sims >= threshold)
        parts.append((rows[ok], idx[ok], sims[ok]))
    return parts


# A GEMM's last bits depend on how BLAS splits it over threads, which differs between a laptop, a
# Ray worker (one thread) and a GPU. Candidates are found with this much slack, then every pair's
# similarity is recomputed by one fixed-order dot product and the real threshold applied, so the
# pairs and their similarities are the same wherever the search ran.
SIM_MARGIN = 1e-3


def rescored(
    cand: Candidates, base: np.ndarray, queries: np.ndarray, views: Sequence[View], threshold: float
) -> Candidates:
    if not len(cand):
        return cand
    sims = np.full(len(cand), -np.inf, dtype=np.float32)
    for lo in range(0, len(cand), 65_536):
        b = rows_of(base, cand.j[lo : lo + 65_536])
        for view in [None, *views]:
            q = rows_of(queries, cand.i[lo : lo + 65_536], view)
            sims[lo : lo + 65_536] = np.maximum(sims[lo : lo + 65_536], np.einsum("ij,ij->i", q, b))
    keep = sims >= threshold
    return Candidates(cand.i[keep], cand.j[keep], sims[keep])


class Mapper(Protocol):
    """What the search needs of an executor (``dedup.core.executors``): an ordered map and its width."""

    parallelism: int

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]: ...


def run_mapped(
    fn: Callable[[Any, Any], Any], items: list[Any], shared: Any, mapper: Mapper | None
) -> list[Any]:
    """``fn(shared, group)`` over contiguous groups of items, flattened in order: one group in this
    process without an executor, a few per worker with one (a task has a fixed cost). Grouping
    changes where the work runs, never a result."""
    if not items:
        return []
    if in_process(mapper):
        return fn(shared, items)
    n = min(len(items), 4 * mapper.parallelism)  # type: ignore[union-attr]
    size = -(-len(items) // n)
    groups = [items[i : i + size] for i in range(0, len(items), size)]
    return [part for group in mapper.map(fn, groups, shared) for part in group]  # type: ignore[union-attr]


def in_process(mapper: Mapper | None) -> bool:
    """No executor, or one that runs one piece at a time here: one piece, with its progress bar."""
    return mapper is None or mapper.parallelism <= 1


def shareable(x: np.ndarray) -> Any:
    """A memory-mapped array travels as its path (workers map it; the work dir is shared), anything
    else as the array."""
    import mmap

    # only the memmap itself: a slice of one keeps the parent's offset attribute, not its own
    if isinstance(x, np.memmap) and x.filename and x.flags.c_contiguous and isinstance(x.base, mmap.mmap):
        return ("memmap", str(x.filename), x.dtype.str, tuple(x.shape), int(x.offset))
    return np.asarray(x)


def opened(x: Any) -> np.ndarray:
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
    from dedup.cluster.ivf import ivf_search  # ivf builds on this module's helpers

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
