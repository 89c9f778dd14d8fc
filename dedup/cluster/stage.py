"""Cluster stage: candidate pairs from cheap signals, a copy verifier's decision per pair, groups
under a chaining policy, one image kept per group.

Candidates, cheapest first: **exact** (same sha256 of the bytes), **phash** (perceptual-hash
Hamming distance <= ``phash_threshold``, either orientation), **embedding** (cosine >=
``embedding_threshold``; mirrored queries for the weight-free descriptor; pairs in the band
[candidate_threshold, embedding_threshold) too, the two most similar per image), and **shared
keypoints** (ORB descriptors kept by embed, voted through a FAISS binary index: what finds crops).

Decision (``grouping.PairOracle``, the only place that decides): same bytes are duplicates; with
``verify: orb`` every other candidate is verified by ``dedup/cluster/copydetect.py`` (align, then compare
the aligned pixels): a ``copy`` is a duplicate, a ``derived`` image one only under ``derived:
remove``, anything else is not. Global signals cannot tell a copy from another photograph of the
same subject, which is why they only propose (``confirm: false`` lets them accept alone, the old
behaviour). Pairs whose images are already linked by verified copies are not verified again
(``implied`` in ``pairs.parquet``): they cannot change a group.

Defaults and what they rest on (bench/RESULTS.md: "Copy detection with hard negatives", "Dedup
quality on the demo corpus"): descriptor cosine 0.97, candidates from 0.5, pHash 10; the verifier's
constants are in ``dedup/cluster/copydetect.py``. For CLIP embeddings (not measurable here: no pretrained
weights offline) 0.95 / 0.85; pick yours with ``dedup evaluate`` on labelled pairs.

Exact duplicates are collapsed before the search (only one copy per sha256 is searched), so a file
re-hosted 10,000 times costs one search, not 10^8 pairs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster import grouping
from dedup.cluster.grouping import PairOracle, group
from dedup.cluster.representatives import RankContext
from dedup.cluster.search import Candidates, Mapper, pair_phash_distance, phash_candidates, search
from dedup.core.config import ClusterConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir, atomic_path, locked, read_json, shard_name, write_json
from dedup.core.markers import is_complete, read_marker, write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.embed.stage import OK, check_embeddings, embeddings_memmap, load_metadata

DEFAULTS = {
    "descriptor": {"embedding_threshold": 0.97, "candidate_threshold": 0.5},
    "clip": {"embedding_threshold": 0.95, "candidate_threshold": 0.85},
    "precomputed": {"embedding_threshold": 0.95, "candidate_threshold": 0.85},
}
VERIFY_TOP_K = 5  # pairs proposed by shared keypoints verified per sample: its best-voted only
# pairs in the cosine band [candidate, embedding threshold) verified per sample; crops, which this
# band was for, now come from shared keypoints, so two (measured: bench/RESULTS.md, "Copy detection")
VERIFY_TOP_K_COSINE = 2
VERIFY_BATCH = 64  # pairs verified at once (fixed, so results do not depend on the thread count)

CLUSTER_SCHEMA = {
    "key": pl.String,
    "cluster_id": pl.Int64,
    "cluster_size": pl.Int64,
    "is_representative": pl.Boolean,
    "representative_key": pl.String,
    "similarity_to_representative": pl.Float32,
    "signal": pl.String,
}


def embed_info(work: WorkDir) -> dict[str, Any]:
    if not work.embed_summary.exists():
        raise UserError(f"{work.embed_summary}: missing; run `dedup embed {work.root}` first")
    return read_json(work.embed_summary)


def thresholds(config: ClusterConfig, embedder: str) -> tuple[float, float]:
    d = DEFAULTS.get(embedder, DEFAULTS["clip"])
    t = config.embedding_threshold if config.embedding_threshold is not None else d["embedding_threshold"]
    c = config.candidate_threshold if config.candidate_threshold is not None else d["candidate_threshold"]
    return float(t), float(min(c, t))


def _mirror_view(embedder: str, dim: int):
    """The descriptor's width comes from the stored vectors, not the summary, which a killed run may
    not have written."""
    if embedder != "descriptor":
        return None
    from dedup.embed.embedders import mirror_descriptors

    side = round(np.sqrt(dim // 3))
    return lambda q: mirror_descriptors(q, side)


def _load_images(work: WorkDir, meta: pl.DataFrame, rows: np.ndarray) -> list[tuple[int, bytes]]:
    """Image bytes for the given metadata rows, one sequential pass per shard."""
    from dedup.core.shards import iter_samples

    wanted = meta[rows.tolist()].select("key", "shard").with_columns(pl.Series("row", rows))
    out = []
    for (shard,), part in wanted.group_by("shard"):
        by_key = dict(zip(part["key"].to_list(), part["row"].to_list(), strict=True))
        for sample in iter_samples(work.input_tar(int(shard))):
            row = by_key.get(sample.key)
            if row is not None and sample.image is not None:
                out.append((int(row), sample.image))
    return out


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


def _stage_key(config: ClusterConfig, work: WorkDir) -> dict[str, Any]:
    """The config and the embed outputs it reads: the cluster stage is done while both are unchanged."""
    markers = {s: read_marker(work, "embed", s) or {} for s in work.download_shards()}
    embedded = [(s, m.get("config_hash"), m.get("rows"), m.get("input")) for s, m in markers.items()]
    reference = None
    if config.against:
        other = WorkDir(config.against)
        reference = [
            (s, (read_marker(other, "embed", s) or {}).get("config_hash")) for s in other.download_shards()
        ]
    settings = config.model_dump(mode="json", exclude={"verify_workers"})  # speed, not results
    key = {"config": settings, "embedded": embedded, "reference": reference, "grouping": grouping.VERSION}
    if config.verify != "none":
        from dedup.cluster import copydetect

        key["verifier"] = copydetect.VERSION  # another verifier decides pairs otherwise: redo
    return key


class ClusterStage(Stage):
    """One unit, run on the driver: the search's partitions (or query blocks) go to the executor's
    ``map``, verification and grouping run here, then a sorted merge; the unit is done while the
    config and the embed outputs it read are unchanged (``_stage_key``)."""

    name = "cluster"
    unit_name = "search"
    on_driver = True

    def __init__(
        self, config: ClusterConfig, force: bool = False, mapper: Mapper | None = None, progress: bool = True
    ) -> None:
        self.config, self.force, self.mapper, self.progress = config, force, mapper, progress
        self.key: dict[str, Any] = {}  # set by plan()

    def inputs(self, work: WorkDir) -> list[Path]:
        return [work.embed_summary, *(work.img_emb(s) for s in work.download_shards())]

    def outputs(self, work: WorkDir) -> list[Path]:
        return [work.pairs, work.clusters, work.cluster_summary]

    def plan(self, work: WorkDir) -> Plan:
        config = self.config
        if config.against and Path(config.against).resolve() == work.root.resolve():
            raise UserError(f"--against {config.against}: that is this work directory; give another one")
        work.check_inputs()
        stale = [
            s
            for s in work.download_shards()
            if (read_marker(work, "embed", s) or {}).get("input") != work.input_identity(s)
        ]
        if stale:
            raise UserError(
                f"{work.root}: shard(s) {', '.join(shard_name(s) for s in stale[:5])} changed or are not "
                "embedded yet; run `dedup embed` first"
            )
        # what the run reads, once: done() and process() use it (no unit runs anywhere but here)
        self.key = _stage_key(config, work)
        return Plan([Unit(0)])

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return (
            not self.force
            and is_complete(work, "cluster", None, self.key)
            and all(p.exists() for p in (work.clusters, work.pairs, work.cluster_summary))
        )

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> dict[str, Any]:
        try:
            summary = _run_cluster(self.config, work, self.progress, self.mapper)
            write_marker(
                work, "cluster", None, self.key, clusters=summary["clusters"], removed=summary["removed"]
            )
            return summary
        finally:
            # the memory-mapped copies of the vectors are scratch: derived, and as large as the embeddings
            for name in ("_embeddings.f16.npy", "_reference.f16.npy"):
                (work.cluster_dir / name).unlink(missing_ok=True)

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        if not todo:
            return {**read_json(work.cluster_summary), "skipped": True}
        return results[0]


@locked
def run_cluster(
    config: ClusterConfig,
    work: WorkDir,
    progress: bool = True,
    force: bool = False,
    executor: Mapper | None = None,
) -> dict[str, Any]:
    """Find the groups and write pairs.parquet, clusters.parquet and the summary (skipped when the config
    and the embeddings are what produced the files already there).

    With an ``executor`` the embedding search's partitions (or query blocks) run as its tasks, after
    the partition assignment on the driver and before a sorted merge; verification and grouping run
    here. The files are the same for any executor."""
    return run_stage(ClusterStage(config, force, executor, progress), work, None, progress)


def _run_cluster(
    config: ClusterConfig, work: WorkDir, progress: bool, executor: Mapper | None
) -> dict[str, Any]:
    """The steps, each a named call: collapse exact copies, propose candidate pairs, verify and decide
    them (one PairOracle), group, attach the reference's matches, write pairs, clusters, summary."""
    started = time.time()
    check_embeddings(work)
    info = embed_info(work)
    t_emb, t_cand = thresholds(config, str(info.get("embedder")))
    meta_all = load_metadata(work).with_row_index("_embed_row")
    # Key order, not shard order: img2dataset writes samples in download-completion order, while its
    # keys follow the URL list, so "first seen" and every tie-break mean the same on any rerun.
    meta = meta_all.filter(pl.col("status") == OK).sort("key")
    if meta.height == 0:
        raise UserError(f"{work.embed_dir}: no successfully embedded images to cluster")
    u = _unique_images(work, meta, str(info.get("embedder")))
    pairs, method = _candidate_pairs(config, work, u, t_cand, progress, executor)
    oracle, verifier = _pair_oracle(
        config, u.x, np.arange(u.count), u.phash, u.phash_m, u.mirror, t_emb, t_cand
    )
    _decide_pairs(config, work, meta, u, pairs, oracle, verifier, progress)
    grouped = _group(config, work, meta, u, pairs, oracle, verifier)
    clusters = _cluster_table_of(meta, u, grouped)
    reference = None
    if config.against:
        reference = match_reference(
            config, work, Path(config.against), meta, u.x, u.rows, u.u_of_row, t_emb, t_cand, executor
        )
    clusters = _mark_reference(clusters, reference)
    _add_grouping_pairs(pairs, oracle, u)
    pair_table = _pair_table(
        meta["key"].to_numpy(),
        u.rows,
        pairs.i,
        pairs.j,
        pairs.proposed,
        pairs.signal,
        pairs.cos,
        pairs.dist,
        pairs.votes,
        oracle.evidence,
        u.canonical,
        u.exact_copy,
    )
    with atomic_path(work.pairs) as tmp:
        pair_table.write_parquet(tmp)
    with atomic_path(work.clusters) as tmp:
        clusters.write_parquet(tmp)
    seconds = time.time() - started
    summary = _summary(
        config, info, method, t_emb, t_cand, meta_all.height, clusters, pair_table, oracle.evidence, seconds
    )
    if reference is not None:
        summary["against"] = str(config.against)
        summary["reference_matches"] = reference.height
        summary["reference_removed"] = int(clusters["reference_key"].is_not_null().sum())
    write_json(work.cluster_summary, summary)
    return summary


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


def _unique_images(work: WorkDir, meta: pl.DataFrame, embedder: str) -> UniqueImages:
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
        mirror=_mirror_view(embedder, int(x.shape[1])),
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


def _candidate_pairs(
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


def _decide_pairs(
    config: ClusterConfig,
    work: WorkDir,
    meta: pl.DataFrame,
    u: UniqueImages,
    pairs: PairSet,
    oracle: PairOracle,
    verifier: Any,
    progress: bool,
) -> None:
    """Verify the pairs worth verifying, then record the oracle's decision for every pair."""
    pi, pj = pairs.i, pairs.j
    signal, check, cos = oracle.proposed(pi, pj)
    linked = pairs.votes > 0
    if verifier is not None:
        # Pairs no global signal accepts are verified only among each sample's most similar
        # candidates (by cosine, and by shared keypoints); every pair a global signal proposed is
        # verified (under confirm).
        chosen = _most_similar(pi, pj, check & (signal == ""), cos, VERIFY_TOP_K_COSINE) | _most_similar(
            pi, pj, linked & (signal == ""), pairs.votes, VERIFY_TOP_K
        )
        linked &= chosen
        check = (check & (signal != "")) | chosen
        involved = np.unique(np.concatenate([pi[check], pj[check]])) if check.any() else np.zeros(0, np.int64)
        _add_images(work, meta, u.rows, u.u_of_row, verifier, involved)
        order = np.lexsort((-cos, signal == ""))  # proposals by a global signal first, most similar first
        workers = config.verify_workers or os.cpu_count() or 1
        looked = _verify_pairs(oracle, pi, pj, order[check[order]], u.count, progress, workers)
        implied = check & ~looked
        check &= looked
    else:
        implied = np.zeros(len(pi), dtype=bool)
    pairs.proposed = signal.copy()
    _, pairs.signal, _ = oracle.decide_pairs(pi, pj, verify=check, linked=linked)
    pairs.accepted = pairs.signal != ""
    pairs.signal[implied] = "implied"
    pairs.cos = cos
    pairs.dist = pair_phash_distance(u.phash, u.phash_m, pi, pj)


def _image_areas(meta: pl.DataFrame) -> np.ndarray:
    """Pixels of each image as downloaded (before any resize), 0 when unknown."""
    return (
        meta.select(
            pl.coalesce(pl.col("original_width"), pl.col("width")).cast(pl.Int64)
            * pl.coalesce(pl.col("original_height"), pl.col("height")).cast(pl.Int64)
        )
        .to_series()
        .fill_null(0)
        .to_numpy()
    )


def _group(
    config: ClusterConfig,
    work: WorkDir,
    meta: pl.DataFrame,
    u: UniqueImages,
    pairs: PairSet,
    oracle: PairOracle,
    verifier: Any,
) -> Any:
    """Groups of the accepted pairs under the configured policy, each with its representative."""
    accepted = pairs.accepted
    if verifier is not None:
        # The grouping may verify any member against its representative: load those images too.
        from dedup.cluster.grouping import components

        labels = components(u.count, pairs.i[accepted], pairs.j[accepted])
        in_groups = np.flatnonzero(np.bincount(labels)[labels] > 1)
        _add_images(work, meta, u.rows, u.u_of_row, verifier, in_groups[~verifier.has_images(in_groups)])
    captions = [meta["caption"][int(r)] for r in u.rows]
    ctx = RankContext(u.x, _image_areas(meta)[u.rows], u.rows.astype(np.int64), captions)
    return group(
        (pairs.i[accepted], pairs.j[accepted]), u.count, config.grouping, oracle, ctx, config.representative
    )


def _cluster_table_of(meta: pl.DataFrame, u: UniqueImages, grouped: Any) -> pl.DataFrame:
    """One row per sample: its representative, by which signal and how similar. An exact copy of a
    non-representative hangs on that copy's representative, linked by its signal."""
    of_row = u.u_of_row[u.canonical]
    rep_row = u.rows[grouped.representative][of_row]
    link = grouped.signal[of_row].astype(object)
    link_sim = grouped.similarity[of_row].astype(np.float32)
    link[u.exact_copy] = "exact"
    link_sim[u.exact_copy] = 1.0
    keys = meta["key"].to_numpy()
    return _cluster_table(keys, keys[rep_row], link, link_sim)


def _add_grouping_pairs(pairs: PairSet, oracle: PairOracle, u: UniqueImages) -> None:
    """Pairs the grouping verified beyond the candidates (a member against its representative), so
    that pairs.parquet holds the evidence for every decision."""
    seen = set(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True))
    extra = np.array(sorted(p for p in oracle.evidence if p not in seen), dtype=np.int64).reshape(-1, 2)
    if not len(extra):
        return
    ei, ej = extra[:, 0], extra[:, 1]
    _, extra_signal, extra_cos = oracle.decide_pairs(ei, ej, linked=np.ones(len(ei), bool))
    pairs.i, pairs.j = np.concatenate([pairs.i, ei]), np.concatenate([pairs.j, ej])
    pairs.proposed = np.concatenate([pairs.proposed, np.full(len(ei), "group", dtype=object)])
    pairs.signal = np.concatenate([pairs.signal, extra_signal])
    pairs.cos = np.concatenate([pairs.cos, extra_cos])
    pairs.dist = np.concatenate([pairs.dist, pair_phash_distance(u.phash, u.phash_m, ei, ej)])
    pairs.votes = np.concatenate([pairs.votes, np.zeros(len(ei), np.int64)])


def _most_similar(pi: np.ndarray, pj: np.ndarray, mask: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
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
    from dedup.embed.stage import local_descriptors

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


def _verify_pairs(
    oracle: PairOracle,
    pi: np.ndarray,
    pj: np.ndarray,
    order: np.ndarray,
    n: int,
    progress: bool,
    workers: int,
) -> np.ndarray:
    """Verify the pairs ``order`` lists, in that order (the slow part: decoding, keypoints,
    alignment), ``workers`` threads at a time; returns which pairs were looked at.

    A pair whose images are already linked by verified copies is skipped: it cannot change any
    group (every grouping links through verified pairs, and a member is checked against its
    representative directly), and in a group of 150 copies it saves ~10,000 alignments. Pairs go
    out in batches of VERIFY_BATCH taken in order and skipped by the links made before the batch,
    so which pairs are verified (and every output) does not depend on the number of threads."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    from tqdm import tqdm

    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    looked = np.zeros(len(pi), dtype=bool)
    pending = order.tolist()
    pos = 0
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # our threads, not OpenCV's, share the cores
    try:
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            tqdm(
                total=len(pending), unit="pair", desc="verify", disable=not progress or len(pending) < 200
            ) as bar,
        ):
            while pos < len(pending):
                batch, start = [], pos
                while pos < len(pending) and len(batch) < VERIFY_BATCH:
                    t = pending[pos]
                    pos += 1
                    if find(int(pi[t])) != find(int(pj[t])):
                        batch.append(t)
                evidence = list(pool.map(lambda t: oracle.check(int(pi[t]), int(pj[t])), batch))
                for t, e in zip(batch, evidence, strict=True):
                    looked[t] = True
                    ra, rb = find(int(pi[t])), find(int(pj[t]))
                    if ra != rb and oracle.accepts(e):
                        parent[ra] = rb
                bar.update(pos - start)
    finally:
        cv2.setNumThreads(threads)
    return looked


def _add_images(work, meta, unique, u_of_row, verifier, ids: np.ndarray) -> None:
    """Give the verifier the images of these unique-image indices."""
    if len(ids):
        loaded = _load_images(work, meta, unique[ids])
        verifier.add_images((int(u_of_row[row]), data) for row, data in loaded)


def match_reference(
    config: ClusterConfig,
    work: WorkDir,
    other: Path,
    meta: pl.DataFrame,
    x: np.ndarray,
    unique: np.ndarray,
    u_of_row: np.ndarray,
    t_emb: float,
    t_cand: float,
    executor: Mapper | None = None,
) -> pl.DataFrame:
    """Samples (key) that duplicate a sample of the reference work directory (reference_key, similarity).

    The same bytes, or a candidate pair from the embedding search that the self-deduplication's
    ``PairOracle`` accepts (signals, copy verifier, confirm, derived policy): one decision for both;
    the reference is only read.
    """
    ref = WorkDir(other)
    mine, theirs = embed_info(work), embed_info(ref)
    ref_meta_all = load_metadata(ref)
    ok = (ref_meta_all["status"] == OK).to_numpy()
    ref_meta = ref_meta_all.filter(ok)
    ref_emb = embeddings_memmap(ref, np.flatnonzero(ok), work.cluster_dir / "_reference.f16.npy")
    if mine.get("model") != theirs.get("model") or x.shape[1] != ref_emb.shape[1]:
        raise UserError(
            f"{other}: embedded with {theirs.get('model')} (dim {ref_emb.shape[1]}), "
            f"this work directory with {mine.get('model')} (dim {x.shape[1]}); "
            "embed both with the same model"
        )
    ref_keys = ref_meta["key"].to_numpy()
    mirror = _mirror_view(str(mine.get("embedder")), int(x.shape[1]))
    found: dict[str, tuple[str, float]] = {}
    by_sha = dict(zip(ref_meta["sha256"].to_list(), ref_keys.tolist(), strict=True))
    for key, sha in zip(meta["key"].to_list(), meta["sha256"].to_list(), strict=True):
        if sha in by_sha:
            found[key] = (by_sha[sha], 1.0)
    cand, _ = search(
        ref_emb,
        config.k,
        t_cand,
        config.search,
        queries=x,
        views=[mirror] if mirror else [],
        exact_max=config.exact_max,
        nlist=config.nlist,
        nprobe=config.nprobe,
        reduce_dim=config.reduce_dim,
        block_size=config.block_size,
        mapper=executor,
    )
    if len(cand):
        # the same decision as self-deduplication: reference rows live after this set's unique rows
        oracle, verifier = _reference_oracle(
            config, meta, unique, x, ref_meta, ref_emb, mirror, t_emb, t_cand
        )
        i, j = cand.i.astype(np.int64), len(unique) + cand.j.astype(np.int64)
        if verifier is not None:
            _add_images(work, meta, unique, u_of_row, verifier, np.unique(cand.i))
            loaded = _load_images(ref, ref_meta, np.unique(cand.j))
            verifier.add_images((len(unique) + int(r), data) for r, data in loaded)
        dup, _, cos = oracle.decide_pairs(i, j)
        keys = meta["key"].to_numpy()
        q_rows = unique[cand.i]
        for t in np.flatnonzero(dup)[np.argsort(-cos[dup], kind="stable")]:
            found.setdefault(str(keys[q_rows[t]]), (str(ref_keys[cand.j[t]]), float(cos[t])))
    return pl.DataFrame(
        {
            "key": list(found),
            "reference_key": [v[0] for v in found.values()],
            "reference_similarity": [v[1] for v in found.values()],
        },
        schema={"key": pl.String, "reference_key": pl.String, "reference_similarity": pl.Float32},
    )


class _Stacked:
    """Two embedding arrays indexed as one (this set's unique rows, then the reference's), read row
    by row: neither is copied into memory whole."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.a.shape[1]), dtype=np.float32)
        mine = rows < len(self.a)
        out[mine] = self.a[rows[mine]]
        out[~mine] = self.b[rows[~mine] - len(self.a)]
        return out


def _reference_oracle(config, meta, unique, x, ref_meta, ref_emb, mirror, t_emb, t_cand):
    """The pair decision of ``--against``: the self-deduplication's oracle (signals, verifier, confirm,
    derived policy) over this set's unique images followed by the reference's."""
    shas = meta["sha256"].to_numpy()[unique].tolist() + ref_meta["sha256"].to_list()
    ids: dict[str, int] = {}
    sha = np.array([ids.setdefault(h, len(ids)) for h in shas], dtype=np.int64)
    phash = np.concatenate([meta["phash"].to_numpy()[unique], ref_meta["phash"].to_numpy()]).astype(np.uint64)
    phash_m = np.concatenate(
        [meta["phash_mirror"].to_numpy()[unique], ref_meta["phash_mirror"].to_numpy()]
    ).astype(np.uint64)
    embeddings = _Stacked(x, ref_emb)
    return _pair_oracle(config, embeddings, sha, phash, phash_m, mirror, t_emb, t_cand)  # type: ignore[arg-type]


def _pair_oracle(config, embeddings, sha, phash, phash_m, mirror, t_emb, t_cand):
    """The one pair decision (``PairOracle``) with the config's signals, verifier, confirm and derived
    policy; self-dedup and ``--against`` both build it here."""
    from dedup.cluster.copydetect import CopyVerifier

    use = set(config.signals)
    verifier = CopyVerifier(min_inliers=config.orb_min_inliers) if config.verify == "orb" else None
    oracle = PairOracle(
        embeddings=embeddings,
        sha=sha,
        phash=phash,
        phash_mirror=phash_m,
        embedding_threshold=t_emb if "embedding" in use else None,
        phash_threshold=config.phash_threshold if "phash" in use else None,
        mirror_view=mirror,
        candidate_threshold=t_cand if verifier is not None else None,
        examine=verifier.examine if verifier is not None else None,
        confirm=config.confirm,
        derived=config.derived,
    )
    return oracle, verifier


def _mark_reference(clusters: pl.DataFrame, matches: pl.DataFrame | None) -> pl.DataFrame:
    """A group one of whose members duplicates the reference is, as a whole, a copy of the reference
    (without --against, the columns are there and empty)."""
    if matches is None:
        return clusters.with_columns(
            pl.lit(None, dtype=pl.String).alias("reference_key"),
            pl.lit(None, dtype=pl.Float32).alias("reference_similarity"),
        )
    per_cluster = (
        clusters.join(matches, on="key", how="inner")
        .sort("reference_similarity", descending=True)
        .group_by("cluster_id", maintain_order=True)
        .first()
        .select("cluster_id", "reference_key", "reference_similarity")
    )
    return clusters.join(per_cluster, on="cluster_id", how="left")


def _cluster_table(keys, rep_keys, link, link_sim) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "key": keys,
            "representative_key": rep_keys,
            "similarity_to_representative": link_sim,
            "signal": [str(s) for s in link],
        }
    )
    df = df.with_columns(
        (pl.col("key") == pl.col("representative_key")).alias("is_representative"),
        pl.col("representative_key").rank("dense").cast(pl.Int64).sub(1).alias("cluster_id"),
    )
    df = df.with_columns(pl.len().over("cluster_id").cast(pl.Int64).alias("cluster_size"))
    df = df.with_columns(
        pl.when(pl.col("is_representative")).then(pl.lit("self")).otherwise(pl.col("signal")).alias("signal"),
        pl.when(pl.col("is_representative"))
        .then(pl.lit(1.0, dtype=pl.Float32))
        .otherwise(pl.col("similarity_to_representative"))
        .alias("similarity_to_representative"),
    )
    return df.select(list(CLUSTER_SCHEMA)).cast(CLUSTER_SCHEMA).sort("cluster_id", "key")


EVIDENCE_COLUMNS = {
    "orb_inliers": pl.Int64,
    "inlier_ratio": pl.Float32,
    "coverage": pl.Float32,
    "pixel_match": pl.Float32,
    "color_match": pl.Float32,
    "detail": pl.Float32,
    "verdict": pl.String,
}


def _evidence_columns(pi: np.ndarray, pj: np.ndarray, evidence: dict) -> dict[str, list]:
    """The copy verifier's evidence per pair (nulls where a pair was not verified)."""
    cols: dict[str, list] = {c: [] for c in EVIDENCE_COLUMNS}
    for a, b in zip(pi.tolist(), pj.tolist(), strict=True):
        e = evidence.get((min(a, b), max(a, b)))
        cols["orb_inliers"].append(e.inliers if e else None)
        cols["inlier_ratio"].append(round(e.inlier_ratio, 4) if e else None)
        cols["coverage"].append(round(e.coverage, 4) if e else None)
        cols["pixel_match"].append(round(e.pixel_match, 4) if e else None)
        cols["color_match"].append(round(e.color_match, 4) if e else None)
        cols["detail"].append(round(e.detail, 4) if e else None)
        cols["verdict"].append(e.verdict if e else None)
    return cols


def _pair_table(
    keys, unique, pi, pj, proposed, signal, cos, dist, votes, evidence, canonical, exact_copy
) -> pl.DataFrame:
    """Every candidate pair with its signals, the verifier's evidence and the final decision."""
    schema = {
        "key_a": pl.String,
        "key_b": pl.String,
        "proposed_by": pl.String,
        "signal": pl.String,
        "similarity": pl.Float32,
        "phash_distance": pl.Int64,
        "shared_keypoints": pl.Int64,
        **EVIDENCE_COLUMNS,
    }
    cand = pl.DataFrame(
        {
            "key_a": keys[unique[pi]],
            "key_b": keys[unique[pj]],
            "proposed_by": [
                s if s else ("keypoints" if v else "none") for s, v in zip(proposed, votes, strict=True)
            ],
            "signal": [s if s else "none" for s in signal],
            "similarity": cos.astype(np.float32),
            "phash_distance": dist.astype(np.int64),
            "shared_keypoints": votes.astype(np.int64),
            **_evidence_columns(pi, pj, evidence),
        },
        schema=schema,
    )
    copies = np.flatnonzero(exact_copy)
    n = len(copies)
    exact = pl.DataFrame(
        {
            "key_a": keys[canonical[copies]],
            "key_b": keys[copies],
            "proposed_by": ["exact"] * n,
            "signal": ["exact"] * n,
            "similarity": np.ones(n, dtype=np.float32),
            "phash_distance": np.zeros(n, dtype=np.int64),
            "shared_keypoints": [None] * n,
            **{c: [None] * n for c in EVIDENCE_COLUMNS},
        },
        schema=schema,
    )
    # "implied": both images were already linked by verified copies, so the pair was never looked at
    return pl.concat([exact, cand]).with_columns(
        pl.when(pl.col("signal") == "implied")
        .then(None)
        .otherwise(pl.col("signal") != "none")
        .alias("duplicate")
    )


def _summary(config, info, method, t_emb, t_cand, rows, clusters, pairs, evidence, seconds) -> dict[str, Any]:
    multi = clusters.filter(pl.col("cluster_size") > 1)
    by_signal = clusters.filter(~pl.col("is_representative")).group_by("signal").len().sort("signal").rows()
    return {
        "rows": rows,
        "clustered": clusters.height,
        "clusters": int(clusters["cluster_id"].n_unique()),
        "duplicate_clusters": int(multi["cluster_id"].n_unique()) if multi.height else 0,
        "removed": int((~clusters["is_representative"]).sum()),
        "largest_cluster": int(clusters["cluster_size"].max() or 0),
        "removed_by_signal": {s: c for s, c in by_signal},
        "candidate_pairs": int((pairs["signal"] != "exact").sum()),
        "duplicate_pairs": int(pairs["duplicate"].sum()),
        "verified_pairs": len(evidence),
        "verified_copies": sum(e.verdict == "copy" for e in evidence.values()),
        "verified_derived": sum(e.verdict == "derived" for e in evidence.values()),
        "search": method,
        "embedder": info.get("embedder"),
        "model": info.get("model"),
        "embedding_threshold": t_emb,
        "candidate_threshold": t_cand,
        "phash_threshold": config.phash_threshold,
        "signals": list(config.signals),
        "verify": config.verify,
        "confirm": config.confirm,
        "derived": config.derived,
        "grouping": config.grouping,
        "representative": config.representative,
        "seconds": round(seconds, 2),
    }


def format_cluster_summary(s: dict[str, Any]) -> str:
    if s.get("skipped"):
        return (
            f"up to date: {s['clusters']} groups, {s['removed']} duplicates to remove "
            "(config and embeddings unchanged since the last run; --force reruns)"
        )
    by = ", ".join(f"{k} {v}" for k, v in s["removed_by_signal"].items()) or "-"
    return (
        f"{s['clustered']} images in {s['clusters']} groups; {s['duplicate_clusters']} groups have "
        f"duplicates (largest {s['largest_cluster']}); {s['removed']} duplicates to remove ({by})\n"
        f"  search {s['search']}, {s['candidate_pairs']} candidate pairs, {s['verified_pairs']} verified "
        f"by aligned pixels ({s['verified_copies']} copies, {s['verified_derived']} derived: "
        f"{s['derived']}); "
        f"thresholds: cosine {s['embedding_threshold']}, pHash {s['phash_threshold']}; "
        f"grouping {s['grouping']}, keep {s['representative']}; "
        f"{s['seconds']:.1f} s"
    )


def load_clusters(work: WorkDir) -> pl.DataFrame:
    if not work.clusters.exists():
        raise UserError(f"{work.clusters}: missing; run `dedup cluster {work.root}` first")
    return pl.read_parquet(work.clusters)


def resolve(path: str | None, work: WorkDir) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() or p.exists() else work.root / p
