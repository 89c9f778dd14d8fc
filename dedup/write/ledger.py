"""The ledger: one row per input sample, saying whether it is kept and, if not, why.

Every row of every img2dataset shard parquet is an input sample, failed downloads included, so a
removal can always be audited (which sample, duplicate of which kept sample, by which signal, how
similar) and reverted (flip ``kept``). Reasons:

* ``kept``: a group's representative, or an image with no duplicate.
* ``duplicate``: ``duplicate_of`` is the kept sample of its group; ``signal``/``similarity`` link them.
* ``reference_duplicate``: its group copies ``duplicate_of`` in the ``--against`` reference set.
* ``download_failed``: img2dataset could not fetch or decode it; ``detail`` is the reason code and
  message.
* ``decode_failed``: downloaded, but the image in the shard does not decode; ``detail`` says why.
"""

from __future__ import annotations

import polars as pl

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.stage import download_rows

LEDGER_SCHEMA = {
    "key": pl.String,
    "url": pl.String,
    "caption": pl.String,
    "input_shard": pl.Int64,
    "kept": pl.Boolean,
    "reason": pl.String,
    "duplicate_of": pl.String,
    "cluster_id": pl.Int64,
    "cluster_size": pl.Int64,
    "signal": pl.String,
    "similarity": pl.Float32,
    "detail": pl.String,
}


def build_ledger(work: WorkDir) -> pl.DataFrame:
    """Join the download rows, the embed statuses and the clusters into the ledger (not written)."""
    from dedup.cluster.stage import load_clusters

    rows = download_rows(work)
    if rows.height == 0:
        raise UserError(f"{work.download_dir}: no downloaded shards; run `dedup download` first")
    clusters = load_clusters(work)
    statuses = pl.concat(
        [pl.read_parquet(work.metadata(s), columns=["key", "status"]) for s in work.download_shards()]
    ).rename({"status": "embed_status"})
    df = (
        rows.select(
            "key",
            "url",
            "caption",
            pl.col("shard").alias("input_shard"),
            "status",
            "error_message",
            pl.col("reason").alias("download_reason"),
        )
        .join(statuses, on="key", how="left")
        .join(clusters, on="key", how="left")
    )
    success = pl.col("status") == "success"
    clustered = pl.col("cluster_id").is_not_null()
    reference = pl.col("reference_key").is_not_null()
    df = df.with_columns(
        pl.when(~success)
        .then(pl.lit("download_failed"))
        .when(~clustered)
        .then(pl.lit("decode_failed"))
        .when(reference)
        .then(pl.lit("reference_duplicate"))
        .when(pl.col("is_representative"))
        .then(pl.lit("kept"))
        .otherwise(pl.lit("duplicate"))
        .alias("reason")
    )
    df = df.with_columns(
        (pl.col("reason") == "kept").alias("kept"),
        pl.when(pl.col("reason") == "duplicate")
        .then(pl.col("representative_key"))
        .when(pl.col("reason") == "reference_duplicate")
        .then(pl.col("reference_key"))
        .otherwise(None)
        .alias("duplicate_of"),
        pl.when(pl.col("reason") == "reference_duplicate")
        .then(pl.lit("reference"))
        .when(pl.col("reason") == "duplicate")
        .then(pl.col("signal"))
        .otherwise(None)
        .alias("signal"),
        pl.when(pl.col("reason") == "reference_duplicate")
        .then(pl.col("reference_similarity"))
        .when(pl.col("reason") == "duplicate")
        .then(pl.col("similarity_to_representative"))
        .otherwise(None)
        .alias("similarity"),
        pl.when(pl.col("reason") == "download_failed")
        .then(pl.col("download_reason") + pl.lit(": ") + pl.col("error_message").fill_null(""))
        .when(pl.col("reason") == "decode_failed")
        .then(pl.col("embed_status").fill_null("not embedded"))
        .otherwise(None)
        .alias("detail"),
    )
    return df.select(list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA)
