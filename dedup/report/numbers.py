"""The report's numbers, each recomputed from a stage's files on disk (never copied from memory)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from dedup.core.layout import WorkDir

BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-19", 5, 19), ("20+", 20, 10**12))


def download_numbers(work: WorkDir) -> dict[str, Any]:
    from dedup.download.stage import FAILURE_LABELS, download_rows

    rows = download_rows(work)
    by = dict(rows.group_by("reason").len().rows())
    return {
        "rows": rows.height,
        "successes": int(by.pop("success", 0)),
        "failures": {FAILURE_LABELS.get(k, k): int(v) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
    }


def cluster_numbers(clusters: pl.DataFrame) -> dict[str, Any]:
    sizes = clusters.group_by("cluster_id").agg(pl.len().alias("n"))["n"].to_numpy()
    hist = dict(zip(*np.unique(sizes, return_counts=True), strict=True))
    share = {}
    for name, lo, hi in BUCKETS:
        in_bucket = sizes[(sizes >= lo) & (sizes <= hi)]
        share[name] = {
            "groups": len(in_bucket),
            "samples": int(in_bucket.sum()),
            "share_of_samples": round(float(in_bucket.sum()) / max(1, int(sizes.sum())), 4),
        }
    return {
        "samples": clusters.height,
        "groups": len(sizes),
        "duplicate_groups": int((sizes > 1).sum()),
        "removed": int((~clusters["is_representative"]).sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "group_size_histogram": {str(int(k)): int(v) for k, v in hist.items()},
        "by_bucket": share,
    }


def ledger_numbers(ledger: pl.DataFrame) -> dict[str, Any]:
    return {
        "input_samples": ledger.height,
        "kept": int(ledger["kept"].sum()),
        "removed": int((~ledger["kept"]).sum()),
        "by_reason": dict(sorted(ledger.group_by("reason").len().rows())),
    }
