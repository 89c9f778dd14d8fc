"""Write stage: the deduplicated WebDataset, every kept sample copied byte for byte, and the ledger.

A sample is copied as the raw tar blocks of its members (headers and data, exactly as they sit in
the input tar), so nothing is decoded, re-encoded or re-stamped: the output is a plain tar that
webdataset, img2dataset's readers and GNU tar read, and the same input gives byte-identical shards.
Kept samples keep their input order (input shard, then position in the tar) and are packed into
output shards of ``samples_per_shard``. Each output shard is an independent task with its own
marker; shards are written under a temporary name and renamed when complete, so a rerun after
kill -9 writes only what is missing.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from dedup.config import WriteConfig
from dedup.layout import (
    WorkDir,
    atomic_path,
    config_hash,
    read_marker,
    remove_stale_temporaries,
    shard_name,
    write_json,
    write_marker,
)
from dedup.ledger import build_ledger

END_OF_ARCHIVE = b"\0" * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Span:
    """A sample's bytes in an input tar: its members' header and data blocks, [start, end)."""

    key: str
    shard: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def index_tar(path: Path, shard: int) -> list[Span]:
    """Spans of the samples of one tar, in tar order, from the headers only (data is not read)."""
    spans: list[Span] = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
            end = member.offset_data + ((member.size + 511) // 512) * 512
            if spans and spans[-1].key == key and spans[-1].end == member.offset:
                spans[-1] = Span(key, shard, spans[-1].start, end)
            else:
                spans.append(Span(key, shard, member.offset, end))
    return spans


def plan_shards(work: WorkDir, kept: set[str], samples_per_shard: int) -> list[list[Span]]:
    """Kept samples in input order, cut into output shards."""
    ordered = [
        s
        for shard in work.download_shards()
        for s in index_tar(work.download_tar(shard), shard)
        if s.key in kept
    ]
    return [ordered[i : i + samples_per_shard] for i in range(0, len(ordered), samples_per_shard)]


def _shard_config(config: WriteConfig, spans: list[Span], work: WorkDir) -> dict[str, Any]:
    digest = hashlib.sha256()
    for s in spans:
        digest.update(f"{s.key}:{s.shard}:{s.start}:{s.end};".encode())
    inputs = sorted({s.shard for s in spans})
    sizes = {shard_name(i): work.download_tar(i).stat().st_size for i in inputs}
    return {"config": config.model_dump(), "plan": digest.hexdigest(), "inputs": sizes}


def copy_spans(spans: list[Span], work: WorkDir, out: Path) -> None:
    """Concatenate the spans' raw tar blocks into ``out`` and close the archive."""
    handles: dict[int, Any] = {}
    try:
        with open(out, "wb") as dst:
            for span in spans:
                src = handles.get(span.shard)
                if src is None:
                    src = handles[span.shard] = open(work.download_tar(span.shard), "rb")  # noqa: SIM115
                src.seek(span.start)
                remaining = span.size
                while remaining:
                    block = src.read(min(_CHUNK, remaining))
                    if not block:
                        raise OSError(f"{work.download_tar(span.shard)}: ends inside sample {span.key}")
                    dst.write(block)
                    remaining -= len(block)
            dst.write(END_OF_ARCHIVE)
            dst.flush()
            os.fsync(dst.fileno())
    finally:
        for h in handles.values():
            h.close()


def _shard_table(rows: pl.DataFrame, spans: list[Span], ledger: pl.DataFrame) -> pl.DataFrame:
    order = pl.DataFrame({"key": [s.key for s in spans]}).with_row_index("_order")
    extra = ledger.select(
        "key",
        pl.col("cluster_id").alias("dedup_cluster_id"),
        pl.col("cluster_size").alias("dedup_cluster_size"),
    )
    return (
        order.join(rows, on="key", how="left").join(extra, on="key", how="left").sort("_order").drop("_order")
    )


def write_shard(
    work: WorkDir,
    index: int,
    spans: list[Span],
    rows: pl.DataFrame,
    ledger: pl.DataFrame,
    config: WriteConfig,
) -> None:
    started = time.time()
    with atomic_path(work.dedup_tar(index)) as tmp:
        copy_spans(spans, work, tmp)
    with atomic_path(work.dedup_parquet(index)) as tmp:
        _shard_table(rows, spans, ledger).write_parquet(tmp)
    ended = time.time()
    n = len(spans)
    write_json(
        work.dedup_stats(index),
        {
            "count": n,
            "successes": n,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": ended - started,
            "start_time": started,
            "end_time": ended,
            "status_dict": {"success": n},
        },
    )
    write_marker(
        work, "write", index, _shard_config(config, spans, work), samples=n, bytes=sum(s.size for s in spans)
    )


def shard_done(work: WorkDir, index: int, spans: list[Span], config: WriteConfig) -> bool:
    marker = read_marker(work, "write", index)
    return (
        marker is not None
        and marker.get("config_hash") == config_hash(_shard_config(config, spans, work))
        and work.dedup_tar(index).exists()
        and work.dedup_parquet(index).exists()
        and work.dedup_stats(index).exists()
    )


def removal_report(ledger: pl.DataFrame, work: WorkDir) -> dict[str, Any]:
    """Samples and bytes by reason (bytes: the sample's size in the input tar)."""
    sizes = {
        s.key: s.size for shard in work.download_shards() for s in index_tar(work.download_tar(shard), shard)
    }
    df = ledger.with_columns(
        pl.col("key").replace_strict(sizes, default=0, return_dtype=pl.Int64).alias("bytes")
    )
    by = df.group_by("reason").agg(pl.len().alias("samples"), pl.col("bytes").sum()).sort("reason")
    return {
        "input_samples": ledger.height,
        "kept": int(ledger["kept"].sum()),
        "removed": int((~ledger["kept"]).sum()),
        "by_reason": {r: {"samples": n, "bytes": int(b)} for r, n, b in by.rows()},
    }


def run_write(
    config: WriteConfig, work: WorkDir, dry_run: bool = False, progress: bool = True
) -> dict[str, Any]:
    started = time.time()
    ledger = build_ledger(work).sort("key")
    report = removal_report(ledger, work)
    if dry_run:
        return {**report, "dry_run": True}
    with atomic_path(work.ledger) as tmp:
        ledger.write_parquet(tmp)
    kept = set(ledger.filter(pl.col("kept"))["key"].to_list())
    plan = plan_shards(work, kept, config.samples_per_shard)
    remove_stale_temporaries(work.dedup_dir)
    work.dedup_dir.mkdir(parents=True, exist_ok=True)
    rows = pl.concat(
        [pl.read_parquet(work.download_parquet(s)) for s in work.download_shards()], how="diagonal_relaxed"
    ).filter(pl.col("key").is_in(list(kept)))
    todo = [i for i, spans in enumerate(plan) if not shard_done(work, i, spans, config)]
    with tqdm(
        total=sum(len(plan[i]) for i in todo), unit="sample", desc="write", disable=not progress or not todo
    ) as bar:
        for i in todo:
            write_shard(work, i, plan[i], rows, ledger, config)
            bar.update(len(plan[i]))
    _remove_extra_shards(work, len(plan))
    summary = {
        **report,
        "output_shards": len(plan),
        "written_shards": len(todo),
        "output_bytes": sum(work.dedup_tar(i).stat().st_size for i in range(len(plan))),
        "seconds": round(time.time() - started, 3),
    }
    write_json(work.write_summary, summary)
    write_marker(work, "write_stage", None, config, kept=summary["kept"], removed=summary["removed"])
    return summary


def _remove_extra_shards(work: WorkDir, n: int) -> None:
    """A rerun that keeps fewer samples must not leave old shards past the new end."""
    for path in work.dedup_dir.iterdir():
        stem = path.name.split(".")[0].split("_")[0]
        if stem.isdigit() and int(stem) >= n:
            path.unlink()
    marker_dir = work.manifest_dir / "write"
    if marker_dir.is_dir():
        for path in marker_dir.glob("*.json"):
            if int(path.stem) >= n:
                path.unlink()


def format_write_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['input_samples']} input samples: {s['kept']} kept, {s['removed']} removed"]
    for reason, v in s["by_reason"].items():
        if reason != "kept":
            lines.append(f"  {reason:<20} {v['samples']:>7} samples  {v['bytes'] / 1e6:>9.2f} MB")
    if s.get("dry_run"):
        lines.append("  (dry run: nothing written)")
    else:
        lines.append(
            f"  wrote {s['written_shards']} of {s['output_shards']} output shard(s), "
            f"{s['output_bytes'] / 1e6:.2f} MB, in {s['seconds']:.1f} s"
        )
    return "\n".join(lines)


def read_output_keys(work: WorkDir) -> list[str]:
    from dedup.layout import shards_in

    keys = []
    for shard in shards_in(work.dedup_dir):
        keys.extend(s.key for s in index_tar(work.dedup_tar(shard), shard))
    return keys
