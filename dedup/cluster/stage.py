"""Cluster stage: candidate pairs from cheap signals, the copy verifier's decision per pair, groups
under a chaining policy, one image kept per group. Three steps, each with its own files and markers,
run together by ``dedup cluster`` and ``dedup run``:

1. **candidates** (``dedup/cluster/candidates.py``): exact copies collapsed, then pHash, embedding and
   shared-keypoint candidates -> ``cluster/candidates.parquet``;
2. **verify** (``dedup/cluster/verify.py``): the pairs worth a look, as units of pair chunks on the
   executor (threads here, tasks on Ray), each unit's evidence in ``cluster/verify/`` with a marker:
   a killed run resumes from its finished units; the verifier (``copydetect.py``) decides cheapest
   first (same pixels, unaligned, uncovered, coarse, aligned);
3. **group** (here): the decision per pair (``oracle.PairOracle``, the only place that decides),
   groups, representatives, the reference's matches -> pairs.parquet, clusters.parquet, summary.

Decision: same bytes are duplicates; with ``verify: orb`` every other candidate is verified by the
copy verifier (align, then compare the aligned pixels): a ``copy`` is a duplicate, a ``derived``
image one only under ``derived: remove``, anything else is not. Global signals cannot tell a copy
from another photograph of the same subject, which is why they only propose (``confirm: false``
lets them accept alone, the old behaviour, except for flat images: a hash of a plain image says
nothing). Pairs whose images are already linked by verified copies of their chunk are not verified
again (``implied`` in ``pairs.parquet``): they cannot change a group.

Defaults and what they rest on (bench/RESULTS.md: "Copy detection with hard negatives", "Dedup
quality on the demo corpus"): descriptor cosine 0.97, candidates from 0.5, pHash 10; the verifier's
settings are in ``dedup/cluster/verifier_settings.py``. For CLIP embeddings (not measurable here: no
pretrained weights offline) 0.95 / 0.85; pick yours with ``dedup evaluate`` on labelled pairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster.candidates import (
    PairSet,
    UniqueImages,
    candidates_key,
    embed_info,
    find_candidates,
    selected_for_verification,
    thresholds,
    unique_images,
)
from dedup.cluster.fingerprint import decision_fingerprint
from dedup.cluster.grouping import group
from dedup.cluster.hash_candidates import pair_phash_distance
from dedup.cluster.oracle import PLAIN_KEYPOINTS, PairOracle, local_threads, pair_oracle
from dedup.cluster.reference import match_reference
from dedup.cluster.representatives import RankContext
from dedup.cluster.search import Mapper
from dedup.cluster.tables import (
    CLUSTER_SCHEMA,
    cluster_table_of,
    format_cluster_summary,
    load_clusters,
    mark_reference,
    pair_table,
    summary_of,
)
from dedup.cluster.verify import VerifyStage, add_images, read_evidence, write_plan
from dedup.core.config import ClusterConfig
from dedup.core.errors import UserError
from dedup.core.files import atomic_path, locked, read_json, write_json
from dedup.core.layout import WorkDir, shard_name
from dedup.core.markers import config_hash, is_complete, read_marker, write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.embed.outputs import load_metadata
from dedup.embed.samples import OK
from dedup.embed.stage import check_embeddings

__all__ = [
    "CLUSTER_SCHEMA",
    "ClusterStage",
    "format_cluster_summary",
    "load_clusters",
    "resolve",
    "run_cluster",
]


def _stage_key(config: ClusterConfig, work: WorkDir) -> dict[str, Any]:
    """The config, the embed outputs it reads and the deciding code: the cluster stage is done while
    all three are unchanged."""
    markers = {s: read_marker(work, "embed", s) or {} for s in work.download_shards()}
    embedded = [(s, m.get("config_hash"), m.get("rows"), m.get("input")) for s, m in markers.items()]
    reference = None
    if config.against:
        other = WorkDir(config.against)
        reference = [
            (s, (read_marker(other, "embed", s) or {}).get("config_hash")) for s in other.download_shards()
        ]
    settings = config.model_dump(mode="json", exclude={"verify_workers", "verify_unit_pairs"})  # speed only
    return {
        "config": settings,
        "embedded": embedded,
        "reference": reference,
        "decision": decision_fingerprint(),
    }


class ClusterStage(Stage):
    """One unit, run on the driver, that drives the three steps: the search's partitions (or query
    blocks) go to the executor's ``map``, the verify step's units to its ``run_units``, grouping runs
    here; the unit is done while the config, the embed outputs it read and the deciding code are
    unchanged (``_stage_key``)."""

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
            summary = _run_cluster(self.config, work, self.progress, self.mapper, self.key, self.force)
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

    With an ``executor`` the embedding search's partitions (or query blocks) and the verify step's
    units run as its tasks; grouping runs here. The files are the same for any executor."""
    return run_stage(ClusterStage(config, force, executor, progress), work, None, progress)


def _run_cluster(
    config: ClusterConfig,
    work: WorkDir,
    progress: bool,
    executor: Mapper | None,
    key: dict[str, Any],
    force: bool = False,
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
    u = unique_images(work, meta, str(info.get("embedder")))
    pairs, method = find_candidates(config, work, u, t_cand, candidates_key(key), progress, executor, force)
    oracle, verifier = pair_oracle(
        config, u.x, np.arange(u.count), u.phash, u.phash_m, u.mirror, t_emb, t_cand, _plain(meta, u)
    )
    tiers, units = _decide_pairs(
        config, work, meta, u, pairs, oracle, verifier, progress, executor, key, force
    )
    before_grouping, grouping_started = len(oracle.evidence), time.perf_counter()
    grouped = _group(config, work, meta, u, pairs, oracle, verifier)
    if len(oracle.evidence) > before_grouping:
        # wall seconds of the whole grouping (its checks run on the oracle's threads)
        seconds = round(time.perf_counter() - grouping_started, 2)
        tiers["grouping"] = {"pairs": len(oracle.evidence) - before_grouping, "seconds": seconds}
    clusters = cluster_table_of(meta, u, grouped)
    reference = None
    if config.against:
        reference = match_reference(
            config, work, Path(config.against), meta, u.x, u.rows, u.u_of_row, t_emb, t_cand, executor
        )
    clusters = mark_reference(clusters, reference)
    table = _write_tables(work, meta, u, pairs, oracle, clusters)
    tiers = {"exact": {"pairs": int(u.exact_copy.sum()), "seconds": 0.0}, **tiers}
    summary = summary_of(
        config, info, method, t_emb, t_cand, meta_all.height, clusters, table, oracle.evidence,
        time.time() - started, tiers,
    )  # fmt: skip
    summary["verify_units"], summary["verify_units_run"] = units
    if reference is not None:
        summary["against"] = str(config.against)
        summary["reference_matches"] = reference.height
        summary["reference_removed"] = int(clusters["reference_key"].is_not_null().sum())
    write_json(work.cluster_summary, summary)
    return summary


def _write_tables(
    work: WorkDir, meta: pl.DataFrame, u: UniqueImages, pairs: Any, oracle: Any, clusters: pl.DataFrame
) -> pl.DataFrame:
    """pairs.parquet (every pair proposed or looked at while grouping, with its evidence), then
    clusters.parquet; returns the pair table (the summary counts from it)."""
    _add_grouping_pairs(pairs, oracle, u)
    table = pair_table(
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
        table.write_parquet(tmp)
    with atomic_path(work.clusters) as tmp:
        clusters.write_parquet(tmp)
    return table


def _plain(meta: pl.DataFrame, u: UniqueImages) -> np.ndarray:
    """Per unique image: too plain for a hash or an embedding to say anything (a flat colour, a blank
    page): so few keypoints that nothing but its pixels can tell it from another plain image."""
    if "local_count" not in meta.columns or meta["local_count"].null_count() == meta.height:
        return np.zeros(u.count, dtype=bool)
    counts = meta["local_count"].fill_null(PLAIN_KEYPOINTS).to_numpy()[u.rows]
    return counts < PLAIN_KEYPOINTS


def _decide_pairs(
    config: ClusterConfig,
    work: WorkDir,
    meta: pl.DataFrame,
    u: UniqueImages,
    pairs: PairSet,
    oracle: PairOracle,
    verifier: Any,
    progress: bool,
    executor: Any,
    key: dict[str, Any],
    force: bool,
) -> tuple[dict[str, dict[str, float]], tuple[int, int]]:
    """Verify the pairs worth verifying (the verify step), then record the oracle's decision for every
    pair; returns the pairs and seconds of each tier, and the verify units (in all, run now)."""
    pi, pj = pairs.i, pairs.j
    signal, check, cos = oracle.proposed(pi, pj)
    linked = pairs.votes > 0
    tiers: dict[str, dict[str, float]] = {}
    units = (0, 0)
    implied = np.zeros(len(pi), dtype=bool)
    if verifier is not None:
        check, linked = selected_for_verification(signal, check, cos, pairs.votes, pi, pj)
        order = np.lexsort((-cos, signal == ""))  # proposals by a global signal first, most similar first
        order = order[check[order]]
        write_plan(work, meta, u.rows, pi, pj, order, oracle.hints(pi[order], pj[order]))
        report = _run_verify(config, work, key, executor, progress, force)
        oracle.evidence.update(read_evidence(work, report["units"]))
        looked = np.array(
            [(a, b) in oracle.evidence for a, b in zip(pi.tolist(), pj.tolist(), strict=True)], bool
        )
        implied = check & ~looked
        check &= looked
        tiers, units = dict(report["tiers"]), (report["units"], report["units_run"])
        tiers["unverified"] = {"pairs": int((~check & ~implied & (signal != "exact")).sum()), "seconds": 0.0}
    pairs.proposed = signal.copy()
    _, pairs.signal, _ = oracle.decide_pairs(pi, pj, verify=check, linked=linked)
    pairs.accepted = pairs.signal != ""
    pairs.signal[implied] = "implied"
    pairs.cos = cos
    pairs.dist = pair_phash_distance(u.phash, u.phash_m, pi, pj)
    return tiers, units


def _run_verify(
    config: ClusterConfig, work: WorkDir, key: dict[str, Any], executor: Any, progress: bool, force: bool
) -> dict[str, Any]:
    """The verify step's units on the executor (its threads or its cluster's workers)."""
    import cv2

    threads = cv2.getNumThreads()
    try:
        runner = executor if executor is not None and hasattr(executor, "run_units") else None
        # locally a unit's batches use every core; on Ray each unit is a one-CPU task
        local = runner is None or getattr(runner, "name", "local") == "local"
        threads = local_threads(config) if local else 1
        embedded = config_hash(key["embedded"])
        stage = VerifyStage(config, key["decision"], embedded, force, threads)
        return run_stage(stage, work, runner, progress)
    finally:
        cv2.setNumThreads(threads)


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
        add_images(work, meta, u.rows, u.u_of_row, verifier, in_groups[~verifier.has_images(in_groups)])
    captions = [meta["caption"][int(r)] for r in u.rows]
    ctx = RankContext(u.x, _image_areas(meta)[u.rows], u.rows.astype(np.int64), captions)
    return group(
        (pairs.i[accepted], pairs.j[accepted]), u.count, config.grouping, oracle, ctx, config.representative
    )


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


def resolve(path: str | None, work: WorkDir) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() or p.exists() else work.root / p
