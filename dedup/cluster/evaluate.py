"""Scoring the dedup against ground truth, and a threshold sweep to choose a threshold from data.

Ground truth comes in one of two shapes:

* groups: one row per sample, ``key`` or ``url``, and ``group`` (samples of one group are copies of
  one image; rows with a negative group are ignored). Optional ``transform`` (how the copy was made)
  and ``copy`` (0 for the original) give per-transformation recall. The demo writes this.
* pairs: labelled pairs ``key_a``/``key_b`` (or ``url_a``/``url_b``) and a boolean ``duplicate``.

Reported, for groups: pairwise precision/recall/F1 over "same group" relations, and the same for the
removals a user cares about: a removal is right when the removed sample truly copies the sample its
group kept. For labelled pairs: precision/recall of "same group" on the labelled pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster.grouping import components
from dedup.core.errors import UserError
from dedup.core.files import write_json
from dedup.core.layout import WorkDir

SWEEP = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


_TEXT_COLUMNS = ("key", "key_a", "key_b", "url", "url_a", "url_b", "duplicate")


def _read_table(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise UserError(f"{path}: no such ground-truth file")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix in (".csv", ".tsv"):
            # keys are strings ("000000042"): never read as numbers, which drops their leading zeros
            sep = "\t" if path.suffix == ".tsv" else ","
            names = pl.read_csv(path, separator=sep, n_rows=0).columns
            text = {c: pl.String for c in names if c in _TEXT_COLUMNS}
            return pl.read_csv(path, separator=sep, schema_overrides=text)
        if path.suffix == ".jsonl":
            return pl.read_ndjson(path)
    except Exception as err:
        raise UserError(f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    raise UserError(f"{path}: ground truth must be .parquet, .csv, .tsv or .jsonl")


def sample_table(work: WorkDir) -> pl.DataFrame:
    """key, url, cluster_id, representative_key of every clustered sample."""
    from dedup.cluster.stage import load_clusters

    clusters = load_clusters(work)
    meta = pl.concat(
        [pl.read_parquet(work.metadata(s), columns=["key", "url"]) for s in work.download_shards()]
    )
    return clusters.join(meta, on="key", how="left")


def _pairs_in(labels: np.ndarray) -> int:
    counts = np.unique(labels, return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def pairwise_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Precision/recall/F1 of "same cluster" against "same group", counted over all pairs."""
    joint = pl.DataFrame({"p": pred, "t": truth}).group_by("p", "t").len()["len"].to_numpy()
    tp = int((joint * (joint - 1) // 2).sum())
    predicted, actual = _pairs_in(pred), _pairs_in(truth)
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "true_pairs": actual,
        "predicted_pairs": predicted,
        "correct_pairs": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def removal_scores(df: pl.DataFrame) -> dict[str, float | int]:
    """``df``: key, group, representative_key (joined to ground truth); scores the removals."""
    group_of = dict(zip(df["key"].to_list(), df["group"].to_list(), strict=True))
    removed = df.filter(pl.col("key") != pl.col("representative_key"))
    right = sum(
        1
        for k, r in zip(removed["key"].to_list(), removed["representative_key"].to_list(), strict=True)
        if group_of.get(k) == group_of.get(r)
    )
    should = int(df.height - df["group"].n_unique())
    precision = right / removed.height if removed.height else 1.0
    recall = right / should if should else 1.0
    return {
        "removed": removed.height,
        "removed_correctly": right,
        "true_duplicates": should,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
    }


def group_outcomes(df: pl.DataFrame) -> dict[str, float | int]:
    """What a user loses and keeps, by true group: a group is *lost* when none of its members is kept
    (a distinct image deleted as a copy of another), and *left with copies* when two or more are."""
    kept = df.with_columns((pl.col("key") == pl.col("representative_key")).alias("_kept"))
    per = kept.group_by("group").agg(pl.col("_kept").sum().alias("kept"), pl.len().alias("size"))
    groups = per.height
    lost = int((per["kept"] == 0).sum())
    left = int((per["kept"] >= 2).sum())
    duplicated = int((per["size"] >= 2).sum())
    return {
        "groups": groups,
        "distinct_lost": lost,
        "distinct_lost_share": round(lost / groups, 4) if groups else 0.0,
        "duplicated_groups": duplicated,
        "copies_left": left,
        "copies_left_share": round(left / duplicated, 4) if duplicated else 0.0,
    }


def per_column(df: pl.DataFrame, column: str) -> dict[str, dict[str, float | int]]:
    """Distinct images lost and copies found, per value of ``column`` (a source, a family)."""
    if column not in df.columns:
        return {}
    out = {}
    for (value,), part in df.group_by(column):
        groups = part["group"].unique()
        whole = df.filter(pl.col("group").is_in(groups.to_list()))
        out[str(value)] = group_outcomes(whole)
    return dict(sorted(out.items()))


def per_transform(df: pl.DataFrame) -> dict[str, dict[str, float | int]]:
    """Share of copies grouped with their original, by how the copy was made."""
    if "transform" not in df.columns or "copy" not in df.columns:
        return {}
    originals = df.filter(pl.col("copy") == 0).select("group", pl.col("cluster_id").alias("orig_cluster"))
    copies = df.filter(pl.col("copy") > 0).join(originals, on="group", how="inner")
    out = {}
    for (t,), part in copies.group_by("transform"):
        found = int((part["cluster_id"] == part["orig_cluster"]).sum())
        out[str(t)] = {"copies": part.height, "found": found, "recall": round(found / part.height, 4)}
    return dict(sorted(out.items()))


def _join_truth(samples: pl.DataFrame, truth: pl.DataFrame, path: Path) -> pl.DataFrame:
    on = "key" if "key" in truth.columns else "url" if "url" in truth.columns else None
    if on is None or "group" not in truth.columns:
        raise UserError(f"{path}: ground truth needs 'group' and 'key' or 'url' columns (or labelled pairs)")
    keep = [c for c in (on, "group", "transform", "copy", "source") if c in truth.columns]
    t = truth.select(keep).filter(pl.col("group") >= 0).unique(on, keep="first")
    return samples.join(t, on=on, how="inner")


def sweep(work: WorkDir, samples: pl.DataFrame, truth_df: pl.DataFrame | None, summary: dict) -> pl.DataFrame:
    """Per embedding threshold: accepted pairs, samples removed, and pairwise P/R where truth exists.

    Groups here are connected components of the accepted pairs (the loosest policy), so the sweep is
    an upper bound on what each threshold removes.
    """
    pairs = pl.read_parquet(work.pairs)
    keys = samples["key"].to_list()
    index = {k: i for i, k in enumerate(keys)}
    a = np.array([index.get(k, -1) for k in pairs["key_a"].to_list()])
    b = np.array([index.get(k, -1) for k in pairs["key_b"].to_list()])
    sim = pairs["similarity"].to_numpy()
    sig = pairs["signal"].to_numpy()
    fixed = np.isin(sig, ["exact", "phash", "verified"])
    truth = None
    if truth_df is not None:
        g = dict(zip(truth_df["key"].to_list(), truth_df["group"].to_list(), strict=True))
        truth = np.array([g.get(k, -1 - i) for i, k in enumerate(keys)])
    rows = []
    thresholds = sorted(set(SWEEP) | {float(summary.get("embedding_threshold", 0.95))})
    for t in thresholds:
        keep = (fixed | (sim >= t)) & (a >= 0) & (b >= 0)
        labels = components(len(keys), a[keep], b[keep])
        row: dict[str, Any] = {
            "threshold": t,
            "pairs": int(keep.sum()),
            "removed": int(len(keys) - len(np.unique(labels))),
        }
        if truth is not None:
            s = pairwise_scores(labels, truth)
            row.update(precision=s["precision"], recall=s["recall"], f1=s["f1"])
        rows.append(row)
    return pl.DataFrame(rows)


def run_evaluate(work: WorkDir, ground_truth: Path | None) -> dict[str, Any]:
    from dedup.core.files import read_json

    samples = sample_table(work)
    summary = read_json(work.cluster_summary) if work.cluster_summary.exists() else {}
    result: dict[str, Any] = {
        "samples": samples.height,
        "ground_truth": str(ground_truth) if ground_truth else None,
    }
    truth_df = None
    if ground_truth is not None:
        truth = _read_table(ground_truth)
        if {"duplicate"} <= set(truth.columns) and (
            {"key_a", "key_b"} <= set(truth.columns) or {"url_a", "url_b"} <= set(truth.columns)
        ):
            result["labelled_pairs"] = _labelled_pairs(samples, truth)
        else:
            truth_df = _join_truth(samples, truth, ground_truth)
            if truth_df.height == 0:
                raise UserError(f"{ground_truth}: no row matches a clustered sample (by key or url)")
            result["matched_samples"] = truth_df.height
            result["pairwise"] = pairwise_scores(
                truth_df["cluster_id"].to_numpy(), truth_df["group"].to_numpy()
            )
            result["removals"] = removal_scores(truth_df)
            result["outcomes"] = group_outcomes(truth_df)
            result["per_source"] = per_column(truth_df, "source")
            result["per_transform"] = per_transform(truth_df)
    table = sweep(work, samples, truth_df, summary)
    table.write_parquet(work.sweep)
    result["sweep"] = table.to_dicts()
    write_json(work.evaluation, result)
    return result


_TRUE = {"true", "yes", "1", "duplicate", "dup"}
_FALSE = {"false", "no", "0", "distinct", "not_duplicate"}


def _label(value: object, a: str, b: str) -> bool:
    """A pair's label read strictly: a typo such as ``maybe`` is an error, never counted as True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UserError(f"pair ({a}, {b}): duplicate label {value!r} is not true/false, yes/no or 1/0")


def _labelled_pairs(samples: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    by = "key" if "key_a" in truth.columns else "url"
    cluster = dict(zip(samples[by].to_list(), samples["cluster_id"].to_list(), strict=True))
    pred, label = [], []
    for a, b, d in zip(
        truth[f"{by}_a"].to_list(), truth[f"{by}_b"].to_list(), truth["duplicate"].to_list(), strict=True
    ):
        labelled = _label(d, a, b)  # every row, matched or not: a typo is found wherever it is
        if a in cluster and b in cluster:
            pred.append(cluster[a] == cluster[b])
            label.append(labelled)
    p, y = np.array(pred, dtype=bool), np.array(label, dtype=bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return {
        "pairs": len(p),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0,
    }


def format_evaluation(r: dict[str, Any]) -> str:
    lines = []
    if "pairwise" in r:
        pw, rm = r["pairwise"], r["removals"]
        lines.append(
            f"against {r['ground_truth']} ({r['matched_samples']} samples):\n"
            f"  duplicate pairs   precision {pw['precision']:.3f}  recall {pw['recall']:.3f}  "
            f"F1 {pw['f1']:.3f}  ({pw['correct_pairs']} of {pw['true_pairs']} true pairs; "
            f"{pw['predicted_pairs']} predicted)\n"
            f"  removals          precision {rm['precision']:.3f}  recall {rm['recall']:.3f}  "
            f"({rm['removed_correctly']} of {rm['removed']} removals right; "
            f"{rm['true_duplicates']} duplicates planted)"
        )
        oc = r["outcomes"]
        lines.append(
            f"  distinct images lost {oc['distinct_lost']} of {oc['groups']} "
            f"({100 * oc['distinct_lost_share']:.1f} %); groups left with copies {oc['copies_left']} "
            f"of {oc['duplicated_groups']} duplicated"
        )
        if r["per_transform"]:
            lines.append(
                "  recall by transformation: "
                + ", ".join(f"{t} {v['recall']:.2f}" for t, v in r["per_transform"].items())
            )
    if "labelled_pairs" in r:
        lp = r["labelled_pairs"]
        lines.append(
            f"labelled pairs: {lp['pairs']}  precision {lp['precision']:.3f}  recall {lp['recall']:.3f}"
        )
    header = "  threshold  pairs  removed" + ("  precision  recall     F1" if "pairwise" in r else "")
    lines.append("threshold sweep (embedding cosine; other signals fixed; connected components):")
    lines.append(header)
    for row in r["sweep"]:
        line = f"  {row['threshold']:>9.2f}  {row['pairs']:>5}  {row['removed']:>7}"
        if "precision" in row:
            line += f"  {row['precision']:>9.3f}  {row['recall']:>6.3f}  {row['f1']:>5.3f}"
        lines.append(line)
    return "\n".join(lines)
