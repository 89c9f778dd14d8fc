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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from dedup.core.config import WriteConfig
from dedup.core.errors import IntegrityError
from dedup.core.files import atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.layout import WorkDir, shard_name
from dedup.core.markers import config_hash, read_marker, write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.write.ledger import build_ledger
from dedup.write.tar_index import Span, index_tar
from dedup.write.verify import made_from, verify

if TYPE_CHECKING:
    from dedup.core.executors import Executor

END_OF_ARCHIVE = b"\0" * 1024
_CHUNK = 1 << 20


def index_shards(work: WorkDir) -> dict[int, list[Span]]:
    """Where every sample sits in its input tar. The embed stage recorded it while reading the tars;
    shards embedded without those columns are indexed from their headers."""
    out = {}
    for shard in work.download_shards():
        meta = work.metadata(shard)
        cols = pq.ParquetFile(meta).schema_arrow.names if meta.exists() else []
        if {"tar_start", "tar_end"} <= set(cols):
            df = pl.read_parquet(meta, columns=["key", "tar_start", "tar_end"])
            out[shard] = [Span(k, shard, a, b) for k, a, b in df.iter_rows()]
        else:
            seen: set[str] = set()  # first occurrences only, as every stage reads an input tar
            out[shard] = [
                s for s in index_tar(work.input_tar(shard), shard) if not (s.key in seen or seen.add(s.key))
            ]
    return out


def plan_shards(index: dict[int, list[Span]], kept: set[str], samples_per_shard: int) -> list[list[Span]]:
    """Kept samples in input order, cut into output shards."""
    ordered = [s for shard in sorted(index) for s in index[shard] if s.key in kept]
    return [ordered[i : i + samples_per_shard] for i in range(0, len(ordered), samples_per_shard)]


def _output_config(config: WriteConfig) -> dict[str, Any]:
    """The settings the output depends on (not the writer count)."""
    return config.model_dump(exclude={"workers"})


def _shard_config(config: WriteConfig, spans: list[Span], work: WorkDir) -> dict[str, Any]:
    digest = hashlib.sha256()
    for s in spans:
        digest.update(f"{s.key}:{s.shard}:{s.start}:{s.end};".encode())
    inputs = sorted({s.shard for s in spans})
    sizes = {shard_name(i): work.input_tar(i).stat().st_size for i in inputs}
    return {"config": _output_config(config), "plan": digest.hexdigest(), "inputs": sizes}


def _ranges(spans: list[Span]) -> list[tuple[int, int, int]]:
    """(input shard, start, end) byte ranges, adjacent spans of one input merged into one range."""
    out: list[tuple[int, int, int]] = []
    for sp in spans:
        if out and out[-1][0] == sp.shard and out[-1][2] == sp.start:
            out[-1] = (sp.shard, out[-1][1], sp.end)
        else:
            out.append((sp.shard, sp.start, sp.end))
    return out


def _copy_range(src: int, dst: int, start: int, length: int) -> None:
    """Kernel-side copy where the OS offers it (copy_file_range), else read and write."""
    offset = start
    while length:
        try:
            done = os.copy_file_range(src, dst, min(length, 1 << 30), offset)
        except (AttributeError, OSError):
            os.lseek(src, offset, os.SEEK_SET)
            block = os.read(src, min(length, _CHUNK))
            done = len(block)
            os.write(dst, block)
        if done == 0:
            raise OSError("input ended inside a sample")
        offset += done
        length -= done


def copy_spans(spans: list[Span], work: WorkDir, out: Path) -> None:
    """Concatenate the spans' raw tar blocks into ``out`` and close the archive."""
    handles: dict[int, int] = {}
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for shard, start, end in _ranges(spans):
            if shard not in handles:
                handles[shard] = os.open(work.input_tar(shard), os.O_RDONLY)
            try:
                _copy_range(handles[shard], dst, start, end - start)
            except OSError as err:
                raise OSError(
                    err.errno, f"{work.input_tar(shard)}: {err.strerror or err}", str(out)
                ) from None
        os.write(dst, END_OF_ARCHIVE)
        os.fsync(dst)
    finally:
        os.close(dst)
        for h in handles.values():
            os.close(h)


def _shard_table(rows: pl.DataFrame, spans: list[Span]) -> pl.DataFrame:
    """The output shard's parquet: its samples' download rows (with their cluster), in tar order."""
    order = pl.DataFrame({"key": [s.key for s in spans]}).with_row_index("_order")
    return order.join(rows, on="key", how="left").sort("_order").drop("_order")


def write_shard(
    work: WorkDir,
    index: int,
    spans: list[Span],
    rows: pl.DataFrame,
    config: WriteConfig,
) -> None:
    started = time.time()
    with atomic_path(work.dedup_tar(index)) as tmp:
        copy_spans(spans, work, tmp)
    with atomic_path(work.dedup_parquet(index)) as tmp:
        _shard_table(rows, spans).write_parquet(tmp)
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


def removal_report(ledger: pl.DataFrame, index: dict[int, list[Span]]) -> dict[str, Any]:
    """Samples and bytes by reason (bytes: the sample's size in the input tar)."""
    sizes = {s.key: s.size for spans in index.values() for s in spans}
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


class WriteStage(Stage):
    """Units: output shards. The driver builds the ledger and the plan; each unit copies its spans."""

    name = "write"
    unit_name = "output shard"

    def __init__(self, config: WriteConfig) -> None:
        self.config = config

    def local_workers(self) -> int:
        # Shards are independent files: while one waits on fsync, the kernel copies the next. Each
        # shard's bytes depend only on the plan, so the output is identical for any worker count.
        return self.config.workers

    def inputs(self, work: WorkDir) -> list[Path]:
        return [work.clusters, *(work.input_tar(s) for s in work.download_shards())]

    def outputs(self, work: WorkDir) -> list[Path]:
        shards = read_json(work.write_summary)["output_shards"] if work.write_summary.exists() else 0
        return [*(work.dedup_tar(i) for i in range(shards)), work.ledger, work.write_summary]

    def plan(self, work: WorkDir) -> Plan:
        started = time.time()
        work.check_inputs()
        ledger = build_ledger(work).sort("key")
        index = index_shards(work)
        with atomic_path(work.ledger) as tmp:
            ledger.write_parquet(tmp)
        kept = ledger.filter(pl.col("kept"))["key"]
        plan = plan_shards(index, set(kept.to_list()), self.config.samples_per_shard)
        remove_stale_temporaries(work.dedup_dir)
        work.dedup_dir.mkdir(parents=True, exist_ok=True)
        rows = pl.concat(
            [pl.read_parquet(work.download_parquet(s)) for s in work.download_shards()],
            how="diagonal_relaxed",
        ).filter(pl.col("key").is_in(kept.implode()))
        rows = rows.join(
            ledger.select(
                "key",
                pl.col("cluster_id").alias("dedup_cluster_id"),
                pl.col("cluster_size").alias("dedup_cluster_size"),
            ),
            on="key",
            how="left",
        )
        with atomic_path(work.write_rows) as tmp:
            rows.write_parquet(tmp)
        units = [Unit(i, size=len(spans), payload=spans) for i, spans in enumerate(plan)]
        return Plan(units, {"report": removal_report(ledger, index), "started": started})

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return shard_done(work, unit.index, unit.payload, self.config)

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> int:
        keys = [s.key for s in unit.payload]
        rows = pl.scan_parquet(work.write_rows).filter(pl.col("key").is_in(keys)).collect()
        write_shard(work, unit.index, unit.payload, rows, self.config)
        return len(keys)

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        n = len(plan.units)
        remove_stale_temporaries(work.dedup_dir)  # a unit retried after its worker died left one
        _remove_extra_shards(work, n)
        work.write_rows.unlink(missing_ok=True)
        report = plan.context["report"]
        summary = {
            **report,
            "output_shards": n,
            "written_shards": len(todo),
            "output_bytes": sum(work.dedup_tar(i).stat().st_size for i in range(n)),
            **made_from(work),
        }
        # verify's invariants before success is reported: a result `dedup verify` would reject
        # never gets a summary or a marker, so no step exits 0 on it.
        problems = verify(work, check_bytes=True, summary=summary)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; ... {len(problems) - 3} more" if len(problems) > 3 else "")
            raise IntegrityError(
                f"{work.root}: the written output breaks its invariants ({shown}); rerun write"
            )
        summary["seconds"] = round(time.time() - plan.context["started"], 3)
        write_json(work.write_summary, summary)
        write_marker(
            work,
            "write_stage",
            None,
            _output_config(self.config),
            kept=summary["kept"],
            removed=summary["removed"],
        )
        return summary


@locked
def run_write(
    config: WriteConfig,
    work: WorkDir,
    dry_run: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The deduplicated shards and the ledger (``dry_run``: only what would be removed)."""
    if dry_run:
        work.check_inputs()
        return {**removal_report(build_ledger(work), index_shards(work)), "dry_run": True}
    return run_stage(WriteStage(config), work, executor, progress)


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
