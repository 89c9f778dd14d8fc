"""The cluster stage's files: clusters.parquet (one row per sample: its group and representative),
pairs.parquet (every candidate pair with its signals, the verifier's evidence and the decision), the
summary, and the summary's one-paragraph form for the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from dedup.cluster.verifier_settings import TIERS
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir

if TYPE_CHECKING:
    from dedup.cluster.candidates import UniqueImages


CLUSTER_SCHEMA = {
    "key": pl.String,
    "cluster_id": pl.Int64,
    "cluster_size": pl.Int64,
    "is_representative": pl.Boolean,
    "representative_key": pl.String,
    "similarity_to_representative": pl.Float32,
    "signal": pl.String,
}


def cluster_table_of(meta: pl.DataFrame, u: UniqueImages, grouped: Any) -> pl.DataFrame:
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


def mark_reference(clusters: pl.DataFrame, matches: pl.DataFrame | None) -> pl.DataFrame:
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
    "decided_by": pl.String,  # the verifier's cascade tier (verifier_settings.TIERS)
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
        cols["decided_by"].append(e.tier if e else None)
    return cols


def pair_table(
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


def summary_of(
    config, info, method, t_emb, t_cand, rows, clusters, pairs, evidence, seconds, tiers
) -> dict[str, Any]:
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
        "tiers": tiers,
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


def format_tiers(tiers: dict[str, dict[str, float]]) -> str:
    """'exact 12, same-pixels 3 (0.1 s), ...': pairs each tier decided, cheapest first."""
    order = ["exact", "unverified", "implied", *TIERS, "grouping"]
    parts = []
    for name in sorted(tiers, key=lambda t: order.index(t) if t in order else len(order)):
        t = tiers[name]
        secs = f" ({t['seconds']:.1f} s)" if t.get("seconds") else ""
        parts.append(f"{name} {int(t['pairs'])}{secs}")
    return ", ".join(parts) or "-"


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
        f"{s['seconds']:.1f} s\n"
        f"  pairs decided by tier: {format_tiers(s.get('tiers', {}))}"
    )


def load_clusters(work: WorkDir) -> pl.DataFrame:
    if not work.clusters.exists():
        raise UserError(f"{work.clusters}: missing; run `dedup cluster {work.root}` first")
    return pl.read_parquet(work.clusters)
