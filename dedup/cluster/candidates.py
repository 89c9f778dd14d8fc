"""The cluster stage's first step: candidate pairs from cheap signals, and which of them the copy
verifier looks at.

Candidates, cheapest first: **exact** (same sha256 of the bytes: collapsed before anything else, so a
file re-hosted 10,000 times costs one search, not 10^8 pairs), **phash** (perceptual-hash Hamming
distance <= ``phash_threshold``, either orientation), **embedding** (cosine >= ``embedding_threshold``;
mirrored queries for the weight-free descriptor; pairs in the band [candidate_threshold,
embedding_threshold) too, the two most similar per image), and **shared keypoints** (ORB descriptors
kept by embed, voted through a FAISS binary index: what finds crops).

Files: ``cluster/candidates.parquet`` (i, j: unique-image indices; votes), reused while the settings
and embeddings it came from are unchanged (its marker, ``cluster-candidates``), so a cluster stage
killed while verifying does not search again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster.hash_candidates import phash_candidates
from dedup.cluster.search import Candidates, Mapper, search
from dedup.core.config import ClusterConfig
from dedup.core.errors import UserError
from dedup.core.files import atomic_path, read_json
from dedup.core.layout import WorkDir
from dedup.core.markers import is_complete, write_marker
from dedup.embed.outputs import embeddings_memmap

DEFAULTS = {
    "descriptor": {"embedding_threshold": 0.97, "candidate_threshold": 0.5},
    "clip": {"embedding_threshold": 0.95, "candidate_threshold": 0.85},
    "precomputed": {"embedding_threshold": 0.95, "candidate_threshold": 0.85},
}


VERIFY_TOP_K = 5  # pairs proposed by shared keypoints verified per sample: its best-voted only


# pairs in the cosine band [candidate, embedding threshold) verified per sample; crops, which this
# band was for, now come from shared keypoints, so two (measured: bench/RESULTS.md, "Copy detection")
VERIFY_TOP_K_COSINE = 2


def embed_info(work: WorkDir) -> dict[str, Any]:
    if not work.embed_summary.exists():
        raise UserError(f"{work.embed_summary}: missing; run `dedup embed {work.root}` first")
    return read_json(work.embed_summary)


def thresholds(config: ClusterConfig, embedder: str) -> tuple[float, float]:
    d = DEFAULTS.get(embedder, DEFAULTS["clip"])
    t = config.embedding_threshold if config.embedding_threshold is not None else d["embedding_threshold"]
    c = config.candidate_threshold if config.candidate_threshold is not None else d["candidate_threshold"]
    return float(t), float(min(c, t))


def mirror_view(embedder: str, dim: int):
    """The descriptor's width comes from the stored vectors, not the summary, which a killed run may
    not have written."""
    if embedder != "descriptor":
        return None
    from dedup.embed.embedders import mirror_descriptors

    side = round(np.sqrt(dim // 3))
    return lambda q: mirror_descriptors(q, side)


def _top_k_mask(c: Candidates, k: int) -> np.ndarray:
    """Pairs that are among the k most similar candidates of either endpoint."""
    if not len(c):
        return np.zeros(0, dtype=bool)
    idx = np.arange(len(c))
    df = pl.DataFrame(
        {
            "node": np.concatenate([c.i, c.j]),
            "pair": np.concatenate([idx, idx]),
            "s": np.concatenate([c.sim, c.sim]),
        }
    )
    top = df.sort(["node", "s"], descending=[False, True]).group_by("node", maintain_order=True).head(k)
    mask = np.zeros(len(c), dtype=bool)
    mask[top["pair"].to_numpy()] = True
    return mask


@dataclass
class UniqueImages:
    """The images left once byte-identical copies collapse onto their first-seen copy (in key order):
    everything after this step works on these; ``canonical`` maps every row back."""

    canonical: np.ndarray  # row -> the row of its first byte-identical copy
    rows: np.ndarray  # unique index -> row
    u_of_row: np.ndarray  # row -> unique index (-1 for an exact copy)
    embed_rows: np.ndarray  # unique index -> row of the embed stage's arrays
    x: np.ndarray  # unique index -> embedding (a float16 memory map)
    phash: np.ndarray
    phash_m: np.ndarray
    mirror: Any

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def exact_copy(self) -> np.ndarray:
        return self.canonical != np.arange(len(self.canonical))


def unique_images(work: WorkDir, meta: pl.DataFrame, embedder: str) -> UniqueImages:
    n = meta.height
    sha_id = meta.select(pl.col("sha256").rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
    first_of_sha = np.full(sha_id.max() + 1, -1, dtype=np.int64)
    for row in range(n - 1, -1, -1):
        first_of_sha[sha_id[row]] = row
    canonical = first_of_sha[sha_id]
    unique = np.flatnonzero(canonical == np.arange(n))
    u_of_row = np.full(n, -1, dtype=np.int64)
    u_of_row[unique] = np.arange(len(unique))
    embed_rows = meta["_embed_row"].to_numpy().astype(np.int64)[unique]
    x = embeddings_memmap(work, embed_rows, work.cluster_dir / "_embeddings.f16.npy")
    return UniqueImages(
        canonical=canonical,
        rows=unique,
        u_of_row=u_of_row,
        embed_rows=embed_rows,
        x=x,
        phash=meta["phash"].to_numpy().astype(np.uint64)[unique],
        phash_m=meta["phash_mirror"].to_numpy().astype(np.uint64)[unique],
        mirror=mirror_view(embedder, int(x.shape[1])),
    )


@dataclass
class PairSet:
    """Candidate pairs of unique images (i < j) and what each step learnt about them: the signal
    that proposed it, the final signal ('' = not a duplicate), cosine, pHash distance, shared
    keypoints, and which pairs the verifier checks / may link."""

    i: np.ndarray
    j: np.ndarray
    votes: np.ndarray
    proposed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    signal: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    cos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # the oracle's acceptances, which grouping links; a pair skipped as already linked through
    # verified copies is then labelled "implied" in `signal`, but keeps the oracle's answer here
    accepted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _near_signals(config: ClusterConfig) -> bool:
    """The verifier's own candidates (a cosine band, shared keypoints) serve the near-duplicate
    signals: with `signals: [exact]` only byte-identical copies are removed."""
    return bool(set(config.signals) & {"phash", "embedding"})


def candidate_pairs(
    config: ClusterConfig,
    work: WorkDir,
    u: UniqueImages,
    t_cand: float,
    progress: bool,
    executor: Mapper | None,
) -> tuple[PairSet, str]:
    """Pairs proposed by the embedding search, the pHash index and shared local features, merged."""
    use, near = set(config.signals), _near_signals(config)
    cand, method = (
        search(
            u.x,
            config.k,
            t_cand,
            config.search,
            views=[u.mirror] if u.mirror else [],
            exact_max=config.exact_max,
            nlist=config.nlist,
            nprobe=config.nprobe,
            reduce_dim=config.reduce_dim,
            block_size=config.block_size,
            progress=progress,
            mapper=executor,
        )
        if "embedding" in use or (near and config.verify == "orb")
        else (Candidates.empty(), "none")
    )
    pi, pj = cand.i, cand.j
    if "phash" in use:
        hi, hj, _ = phash_candidates(u.phash, u.phash_m, config.phash_threshold)
        pi, pj = np.concatenate([pi, hi]), np.concatenate([pj, hj])
    local = (
        _local_candidates(work, u.embed_rows, u.count, config)
        if near
        else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    pi, pj = np.concatenate([pi, local[0]]), np.concatenate([pj, local[1]])
    merged = pl.DataFrame({"i": pi, "j": pj}).unique().sort("i", "j")
    pi, pj = merged["i"].to_numpy(), merged["j"].to_numpy()
    return PairSet(pi, pj, _votes_of(pi, pj, *local, u.count)), method


def most_similar(pi: np.ndarray, pj: np.ndarray, mask: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Of the masked pairs, those among the k best-scored of either endpoint."""
    out = np.zeros(len(pi), dtype=bool)
    idx = np.flatnonzero(mask)
    out[idx[_top_k_mask(Candidates(pi[idx], pj[idx], score[idx].astype(np.float32)), k)]] = True
    return out


def _local_candidates(
    work: WorkDir, rows: np.ndarray, n: int, config: ClusterConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of unique images sharing many ORB descriptors (i, j, votes); empty when off."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not config.local_candidates or config.verify != "orb":
        return empty
    from dedup.embed.localfeatures import candidate_pairs
    from dedup.embed.outputs import local_descriptors

    descriptors, owner = local_descriptors(work, rows)
    return candidate_pairs(descriptors, owner, n) if len(descriptors) else empty


def _votes_of(
    pi: np.ndarray, pj: np.ndarray, li: np.ndarray, lj: np.ndarray, lv: np.ndarray, n: int
) -> np.ndarray:
    """Shared-descriptor votes of each pair (i, j) (0 where local features did not propose it)."""
    out = np.zeros(len(pi), dtype=np.int64)
    if len(li):
        lookup = dict(zip((li * n + lj).tolist(), lv.tolist(), strict=True))
        out[:] = [lookup.get(k, 0) for k in (pi * n + pj).tolist()]
    return out


def candidates_key(stage_key: dict[str, Any]) -> dict[str, Any]:
    """What the candidates depend on: the stage's key less the settings that only group and rank."""
    config = {
        k: v
        for k, v in stage_key["config"].items()
        if k not in ("grouping", "representative", "ground_truth", "against", "derived")
    }
    return {**stage_key, "config": config, "reference": None}


def find_candidates(
    config: ClusterConfig,
    work: WorkDir,
    u: UniqueImages,
    t_cand: float,
    key: dict[str, Any],
    progress: bool,
    executor: Mapper | None,
    force: bool = False,
) -> tuple[PairSet, str]:
    """The candidate pairs, from ``cluster/candidates.parquet`` when its marker matches ``key``."""
    path = work.candidates
    if not force and path.exists() and is_complete(work, "cluster-candidates", None, key):
        table = pl.read_parquet(path)
        pi, pj = table["i"].to_numpy(), table["j"].to_numpy()
        marker = read_json(work.marker("cluster-candidates"))
        return PairSet(pi, pj, table["votes"].to_numpy()), str(marker.get("search", "none"))
    pairs, method = candidate_pairs(config, work, u, t_cand, progress, executor)
    with atomic_path(path) as tmp:
        pl.DataFrame(
            {"i": pairs.i, "j": pairs.j, "votes": pairs.votes},
            schema={"i": pl.Int64, "j": pl.Int64, "votes": pl.Int64},
        ).write_parquet(tmp)
    write_marker(work, "cluster-candidates", None, key, pairs=len(pairs.i), search=method)
    return pairs, method


def selected_for_verification(
    signal: np.ndarray, check: np.ndarray, cos: np.ndarray, votes: np.ndarray, pi: np.ndarray, pj: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(check, linked): the pairs the verifier looks at, and those proposed by shared keypoints.

    Pairs no global signal accepts are verified only among each sample's most similar candidates (by
    cosine, and by shared keypoints); every pair a global signal proposed is verified (under
    confirm)."""
    linked = votes > 0
    chosen = most_similar(pi, pj, check & (signal == ""), cos, VERIFY_TOP_K_COSINE) | most_similar(
        pi, pj, linked & (signal == ""), votes, VERIFY_TOP_K
    )
    return (check & (signal != "")) | chosen, linked & chosen
