"""Download stage: a URL list (LAION-style metadata) into WebDataset shards, with img2dataset.

We compose img2dataset's own reader, downloader, writer and distributors rather than call its
``download()`` entry point, for two reasons: its area guard runs only after the full decode (a
decompression bomb is decoded before it is refused), and its logger process polls for wandb. Our
resizer reads the image header first and refuses oversize images before any pixel is decoded.
The output folder is exactly img2dataset's (``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``),
so any tool that reads img2dataset output reads ours.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

# img2dataset imports albumentations, which otherwise checks the network for updates at import time
# (in this process and in every spawned worker, which inherits the environment).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import polars as pl

from dedup.core.config import DownloadConfig
from dedup.core.errors import UserError
from dedup.core.files import locked, read_json, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import read_marker, write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.download.urllist import (
    check_same_input,
    fingerprint,
    input_rows,
    key_settings,
    normalise,
    validate_url_list,
)

DISALLOWED_DIRECTIVES = ["noai", "noimageai", "noindex", "noimageindex"]


# -- run ----------------------------------------------------------------------------------------------


def refuse_imported(work: WorkDir) -> None:
    """A work dir made by ``dedup import`` is not downloaded into: its shards (some perhaps read in
    place from the user's own files) would mix with img2dataset's."""
    if work.download_summary.exists():
        from dedup.download.readers import importable_kinds

        previous = read_json(work.download_summary)
        if previous.get("kind") in importable_kinds():
            raise UserError(
                f"{work.root}: holds data imported from {previous.get('source')}; "
                "download into a new work directory"
            )


class DownloadStage(Stage):
    """The download on the stage contract, with img2dataset as the engine: ``plan`` checks the URL
    list and writes its normalised parts (input/, the keys every sample keeps); the one unit runs
    img2dataset's reader, downloader and distributor (its own processes, Spark or Ray spread the
    shards; a rerun passes it the finished ones to skip); ``finish`` writes the summary and a
    marker per shard with the settings that made it. On the driver: img2dataset distributes."""

    name = "download"
    unit_name = "URL list"
    on_driver = True

    def __init__(self, config: DownloadConfig) -> None:
        self.config = config

    def outputs(self, work: WorkDir) -> list[Path]:
        return [work.download_dir, work.download_summary]

    def plan(self, work: WorkDir) -> Plan:
        config = self.config
        files, fmt, _ = validate_url_list(config)  # the row count is normalise's, below
        if config.distributor in ("ray", "pyspark"):
            from dedup.core.optional import require

            extra = {"ray": "ray", "pyspark": "spark"}[config.distributor]
            require(config.distributor, extra=extra, purpose=f"--distributor {config.distributor}")
        refuse_imported(work)
        settings = key_settings(config, fmt)
        identity = (
            check_same_input(work, files, settings) if config.incremental else fingerprint(files, settings)
        )
        if not config.incremental and work.download_dir.exists():
            shutil.rmtree(work.download_dir)
        total_rows = normalise(work, files, fmt, config, identity)
        work.download_dir.mkdir(parents=True, exist_ok=True)
        done = set(work.download_shards())
        expected = math.ceil(total_rows / config.samples_per_shard) if len(files) == 1 else None
        return Plan(
            [Unit(0, size=total_rows, payload={"format": fmt, "expected_shards": expected})],
            {"total_rows": total_rows, "done": done},
        )

    def done(self, work: WorkDir, unit: Unit) -> bool:
        """Every shard of a single URL list exists (with several files img2dataset numbers shards
        as it reads, so only it can tell what is left)."""
        expected = unit.payload["expected_shards"]
        shards = set(work.download_shards())
        return expected is not None and all(s in shards for s in range(expected))

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> float:
        started = time.time()
        run_img2dataset(self.config, work, unit.payload["format"], set(work.download_shards()))
        return time.time() - started

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        done = plan.context["done"]
        elapsed = sum(results)
        summary = summarize_download(
            work, total_rows=plan.context["total_rows"], run_seconds=elapsed, resumed_shards=len(done)
        )
        for shard in work.download_shards():
            if shard in done and read_marker(work, "download", shard) is not None:
                continue  # a shard an earlier run made keeps the record of the settings that made it
            stats = read_json(work.download_stats(shard))
            write_marker(
                work, "download", shard, self.config, count=stats["count"], successes=stats["successes"]
            )
        write_json(work.download_summary, summary)
        return summary


def _downloader(config: DownloadConfig, out: Path, column_list: list[str], txt: bool) -> Any:
    """img2dataset's downloader with this project's resizer (strict size and area guards)."""
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter

    from dedup.download.resizer import StrictResizer

    resizer = StrictResizer(
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_quality=config.encode_quality,
        encode_format=config.encode_format,
        skip_reencode=config.skip_reencode,
        min_image_size=config.min_image_size,
        max_image_area=config.max_image_area,
        max_aspect_ratio=config.max_aspect_ratio,
    )
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=config.threads,
        save_caption=config.caption_col is not None and not txt,
        extract_exif=False,
        output_folder=str(out),
        column_list=column_list,
        timeout=config.timeout,
        number_sample_per_shard=config.samples_per_shard,
        oom_shard_count=5,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=config.encode_format,
        retries=config.retries,
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=DISALLOWED_DIRECTIVES if config.respect_robots else None,
    )


def run_img2dataset(config: DownloadConfig, work: WorkDir, fmt: str, done: set[int]) -> None:
    """img2dataset over the normalised parts in input/, skipping the shards in ``done``."""
    from img2dataset.distributor import (
        multiprocessing_distributor,
        pyspark_distributor,
        ray_distributor,
    )
    from img2dataset.reader import Reader

    out = work.download_dir
    tmp = out / "_tmp"
    tmp.mkdir(exist_ok=True)
    txt = fmt.removesuffix(".gz") == "txt"
    # img2dataset reads the normalised parts (dedup.download.urllist), by column name: the keys it gives are
    # the ones input/ recorded, and every caption and extra column is a string it can write.
    reader = Reader(
        str(work.input_dir.resolve()),
        "parquet",
        "url",
        "caption" if config.caption_col is not None and not txt else None,
        None,
        None,
        list(config.save_additional_columns) or None,
        config.samples_per_shard,
        done,
        str(tmp),
        0,
    )
    downloader = _downloader(config, out, reader.column_list, txt)
    distributor = {
        "multiprocessing": multiprocessing_distributor,
        "pyspark": pyspark_distributor,
        "ray": ray_distributor,
    }[config.distributor]
    distributor(config.processes, downloader, reader, 1000, 1)
    shutil.rmtree(tmp, ignore_errors=True)


@locked
def run_download(config: DownloadConfig, work: WorkDir) -> dict[str, Any]:
    """Download ``config.url_list`` into ``work.download_dir``; return (and save) the summary."""
    return run_stage(DownloadStage(config), work, progress=False)


# -- summary ------------------------------------------------------------------------------------------

FAILURE_LABELS = {
    "missing_url": "missing URL",
    "malformed_url": "malformed URL",
    "http_4xx": "HTTP 4xx",
    "http_5xx": "HTTP 5xx",
    "connection_refused": "connection refused",
    "timeout": "timed out",
    "dns": "DNS lookup failed",
    "ssl": "TLS/SSL error",
    "robots_optout": "opted out (X-Robots-Tag)",
    "area_guard": "over the area guard",
    "truncated": "truncated image",
    "not_an_image": "not an image",
    "undecodable": "undecodable image",
    "too_small": "image too small",
    "aspect_ratio": "aspect ratio too large",
    "not_recorded": "not recorded by img2dataset",
    "other": "other",
}


def failure_reason(status: str | None, error_message: str | None, url: str | None) -> str:
    """A stable reason code for one img2dataset row (``success`` or one of FAILURE_LABELS)."""
    if status == "success":
        return "success"
    if url is None or not str(url).strip():
        return "missing_url"
    msg = (error_message or "").lower()
    if "x-robots-tag" in msg:
        return "robots_optout"
    m = re.search(r"http error (\d)\d\d", msg)
    if m:
        return "http_4xx" if m.group(1) == "4" else "http_5xx"
    if NOT_RECORDED in msg.lower():
        return "not_recorded"
    rules = [
        (("unknown url type", "no host given", "invalid url", "url can't contain"), "malformed_url"),
        (("connection refused",), "connection_refused"),
        (("timed out", "timeout"), "timeout"),
        (("name or service not known", "name resolution", "nodename nor servname", "getaddrinfo"), "dns"),
        (("ssl", "certificate"), "ssl"),
        (("image area too large",), "area_guard"),
        (("truncated",), "truncated"),
        (("not an image", "cannot identify image"), "not_an_image"),
        (("decoding error", "decode"), "undecodable"),
        (("image too small",), "too_small"),
        (("aspect ratio",), "aspect_ratio"),
    ]
    for needles, code in rules:
        if any(n in msg for n in needles):
            return code
    return "other"


def download_rows(work: WorkDir) -> pl.DataFrame:
    """Every input row img2dataset recorded (successes and failures), with a reason code."""
    frames = []
    for shard in work.download_shards():
        df = pl.read_parquet(work.download_parquet(shard))
        keep = [
            c
            for c in (
                "key",
                "url",
                "caption",
                "status",
                "error_message",
                "width",
                "height",
                "original_width",
                "original_height",
                "sha256",
            )
            if c in df.columns
        ]
        frames.append(df.select(keep).with_columns(pl.lit(shard).alias("shard")))
    frames += unrecorded_rows(work, frames)
    if not frames:
        return pl.DataFrame(
            schema={
                "key": pl.String,
                "url": pl.String,
                "status": pl.String,
                "error_message": pl.String,
                "shard": pl.Int64,
                "reason": pl.String,
            }
        )
    df = pl.concat(frames, how="diagonal_relaxed")
    for column in ("caption", "error_message"):  # absent from shards that other tools wrote
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    reasons = [
        failure_reason(s, e, u)
        for s, e, u in zip(
            df["status"].to_list(), df["error_message"].to_list(), df["url"].to_list(), strict=True
        )
    ]
    return df.with_columns(pl.Series("reason", reasons, dtype=pl.String))


NOT_RECORDED = "img2dataset wrote no row for it"


def unrecorded_rows(work: WorkDir, frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Input rows img2dataset did not record (its shard died, or its writer dropped them): failed
    rows that say so, so the ledger still accounts for them and a rerun retries their shard."""
    inputs = input_rows(work)
    if inputs is None:
        return []
    seen = pl.concat([f.select("key") for f in frames]) if frames else pl.DataFrame(schema={"key": pl.String})
    missing = inputs.join(seen, on="key", how="anti")
    if missing.height == 0:
        return []
    finished = set(work.download_shards())
    why = pl.when(pl.col("shard").is_in(list(finished)))
    return [
        missing.with_columns(
            pl.lit("failed_to_download").alias("status"),
            why.then(pl.lit(f"{NOT_RECORDED} (its shard finished without it)"))
            .otherwise(pl.lit(f"{NOT_RECORDED} (its shard did not finish; a rerun retries it)"))
            .alias("error_message"),
        )
    ]


def summarize_download(
    work: WorkDir, total_rows: int | None = None, run_seconds: float | None = None, resumed_shards: int = 0
) -> dict[str, Any]:
    rows = download_rows(work)
    stats = [read_json(work.download_stats(s)) for s in work.download_shards()]
    successes = int((rows["reason"] == "success").sum()) if rows.height else 0
    failures: dict[str, dict[str, Any]] = {}
    for reason, group in rows.filter(pl.col("reason") != "success").group_by("reason"):
        code = reason[0] if isinstance(reason, tuple) else reason
        example = group["error_message"].drop_nulls().head(1).to_list()
        failures[str(code)] = {
            "label": FAILURE_LABELS.get(str(code), str(code)),
            "count": group.height,
            "example": example[0] if example else None,
        }
    failures = dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"]))
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats) if stats else 0.0
    return {
        "input_rows": total_rows if total_rows is not None else rows.height,
        "rows": rows.height,
        "shards": len(stats),
        "resumed_shards": resumed_shards,
        "successes": successes,
        "failed": rows.height - successes,
        "failures": failures,
        "download_seconds": round(span, 3),
        "images_per_second": round(successes / span, 2) if span > 0 else None,
        "run_seconds": round(run_seconds, 3) if run_seconds is not None else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"rows {summary['rows']}  shards {summary['shards']}  (resumed {summary['resumed_shards']})",
        f"  successes            {summary['successes']:>8}",
    ]
    for info in summary["failures"].values():
        lines.append(f"  {info['label']:<22} {info['count']:>6}")
    ips = summary["images_per_second"]
    lines.append(
        f"  failed               {summary['failed']:>8}"
        + (f"   |  {ips:.1f} images/s over {summary['download_seconds']:.1f} s" if ips else "")
    )
    return "\n".join(lines)
