"""Import stage: data a user already has (WebDataset shards, a folder of images, parquet files with
image bytes) into a work directory's ``download/`` folder, in img2dataset's layout, so every later
stage runs unchanged.

Most users of a dedup tool already hold their data; they should not have to serve it over HTTP to
download it again. Sources are paths or fsspec URLs (``file://``, ``s3://``, ``gs://``, ``hf://`` with
the matching extra installed), read through one fsspec filesystem (``sources.py``: what a source is;
``readers/``: one reader per kind, which says how the import splits into units). Local shards are read
in place (a reference, no byte copied); a folder's and parquet's images become new shards with their
original bytes (never re-encoded), plus ``.txt`` (caption) and ``.json`` (origin).

The shard parquet records every source row, unreadable ones included (``status: failed_to_download``
with the reason), so the ledger accounts for every imported sample. Files are written under a
temporary name and renamed, and ``_stats.json`` is written last, as img2dataset does: a killed import
resumes from its finished units. The files the import read are listed (name, size, mtime) in
``source_listing.parquet``: a rerun or ``dedup run`` on a changed source is refused, never "up to date".
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from dedup.core.errors import UserError
from dedup.core.files import atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.layout import WorkDir, shards_in
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.download.readers import ImportOptions, importable_kinds, reader_for
from dedup.download.sources import (
    Source,
    changes,
    describe_changes,
    hidden_count,
    listing,
    open_source,
    source_identity,
)

if TYPE_CHECKING:
    from dedup.core.executors import Executor

# How an import numbers its shards: a part per source file, its shards known from the file (layout 2).
# Parquet rows were streamed across files before (layout 1): such a work directory is not resumed.
LAYOUT = 2


def _source_changed(work: WorkDir, src: Source) -> str | None:
    """What changed in ``src`` since the listing an earlier import of it stored; None if nothing."""
    if not work.source_listing.exists():
        return None
    diff = changes(pl.read_parquet(work.source_listing), listing(src, fresh=True))
    return describe_changes(diff) or None


def check_source(work: WorkDir, src: Source) -> None:
    """Refuse a source that changed since this work directory imported it: its results describe
    the old files, so the new ones would never get a ledger row."""
    changed = _source_changed(work, src)
    if changed:
        raise UserError(
            f"{src.url}: changed since it was imported into {work.root} ({changed}); import it into "
            "a new work directory"
        )


class ImportStage(Stage):
    """The import on the stage contract: a unit per part its reader names (a tar, a parquet file, a
    slice of a folder), each writing shards numbered before any is written, done when they all have
    their ``_stats.json``. Units run on the executor's workers, which must reach the source (as they
    must reach in-place shards at embed).

    ``plan`` refuses what cannot be imported here (another source's work directory, a changed
    source) before anything is written; ``finish`` runs the reader's checks across shards (keys
    unique across tars) and that the source did not change while it was read, then the summary."""

    name = "import"
    unit_name = "source part"

    def __init__(self, source: str | Path, options: ImportOptions) -> None:
        self.options = options
        self.src = open_source(source)
        self.reader = reader_for(self.src, options)

    def outputs(self, work: WorkDir) -> list[Path]:
        return [work.download_summary, work.source_listing]

    def plan(self, work: WorkDir) -> Plan:
        src = self.src
        identity = source_identity(src)
        previous = read_json(work.download_summary) if work.download_summary.exists() else None
        if previous is not None and previous.get("kind") in importable_kinds():
            if previous.get("source") != identity:
                raise UserError(
                    f"{work.root}: already imported from {previous.get('source')}; "
                    "import another source into a new work directory"
                )
            if previous.get("kind") == "parquet" and previous.get("layout") != LAYOUT:
                raise UserError(
                    f"{work.root}: imported by an earlier version of dedup, which numbered parquet "
                    "shards differently; import into a new work directory"
                )
            check_source(work, src)
        elif previous is not None or shards_in(work.download_dir):
            raise UserError(f"{work.download_dir}: already holds shards; import into a new work directory")
        parts = self.reader.parts()  # refusals that need only names or footers, before any write
        work.download_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(work.download_dir)  # a killed import's half-written files
        files = listing(src)
        if previous is None:
            with atomic_path(work.source_listing) as tmp:
                files.write_parquet(tmp)
        # Named before any shard is written, so a killed import resumes instead of being refused.
        start = {"source": identity, "kind": src.kind, "layout": LAYOUT, "complete": False}
        write_json(work.download_summary, start)
        units, first = [], 0
        for i, part in enumerate(parts):
            units.append(Unit(i, size=part.size, payload=(first, part)))
            first += part.shards
        return Plan(units, {"identity": identity, "source_files": files.height, "started": time.time()})

    def done(self, work: WorkDir, unit: Unit) -> bool:
        first, part = unit.payload
        return all(work.download_stats(s).exists() for s in range(first, first + part.shards))

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> Any:
        first, part = unit.payload
        self.reader.write(work, part, first)

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        src = self.src
        shards = shards_in(work.download_dir)
        self.reader.check(work, [u.payload[1] for u in plan.units])
        if _source_changed(work, src):
            raise UserError(f"{src.url}: changed while it was being imported; import it again")
        totals = {"count": 0, "successes": 0}
        for shard in shards:
            _add_stats(totals, read_json(work.download_stats(shard)))
        summary = {
            "source": plan.context["identity"],
            "kind": src.kind,
            "layout": LAYOUT,
            "in_place": self.reader.in_place,
            "rekeyed": self.options.rekey,
            "input_rows": totals["count"],
            "downloaded": totals["successes"],
            "failed": totals["count"] - totals["successes"],
            "shards": len(shards),
            "source_files": plan.context["source_files"],
            "hidden_not_imported": hidden_count(src),
            "seconds": round(time.time() - plan.context["started"], 2),
            "complete": True,
        }
        write_json(work.download_summary, summary)
        return summary


@locked
def run_import(
    source: str | Path,
    work: WorkDir,
    samples_per_shard: int = 10_000,
    caption_col: str | None = None,
    rekey: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Import ``source`` into ``work``'s download folder; returns (and saves) the summary.

    A rerun of the same import resumes: finished shards (their ``_stats.json`` exists) are kept. A
    source that changed since is refused; an import refused for what the source holds leaves the
    work directory as it found it, so another source can be imported there.
    """
    fresh = not work.download_summary.exists() and not shards_in(work.download_dir)
    try:
        stage = ImportStage(source, ImportOptions(samples_per_shard, caption_col, rekey))
        return run_stage(stage, work, executor, progress=False)
    except UserError:
        if fresh:
            _forget_import(work)
        raise


def _forget_import(work: WorkDir) -> None:
    """Undo a refused import: its shards, summary and listing (a refusal recurs on every rerun, so
    what it wrote could only block the work directory)."""
    shutil.rmtree(work.download_dir, ignore_errors=True)
    shutil.rmtree(work.manifest_dir / "download", ignore_errors=True)
    for path in (work.download_summary, work.source_listing):
        path.unlink(missing_ok=True)


def _add_stats(totals: dict[str, int], stats: dict[str, Any]) -> None:
    totals["count"] += stats["count"]
    totals["successes"] += stats["successes"]


def format_import_summary(s: dict[str, Any]) -> str:
    where = " (read in place: no image bytes copied)" if s.get("in_place") else ""
    rekeyed = " (keys prefixed with their tar's name)" if s.get("rekeyed") else ""
    hidden = s.get("hidden_not_imported", 0)
    skipped = f"; {hidden} hidden files not imported" if hidden else ""
    return (
        f"imported {s['downloaded']} of {s['input_rows']} images from {s['kind']} {s['source']} "
        f"into {s['shards']} shards{where}{rekeyed} ({s['failed']} unreadable, each with a ledger row)"
        f"{skipped}; {s['seconds']:.1f} s"
    )
