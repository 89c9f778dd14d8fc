"""Import stage: data a user already has (WebDataset shards, a folder of images, parquet files with
image bytes) into a work directory's ``download/`` folder, in img2dataset's layout, so every later
stage runs unchanged.

Most users of a dedup tool already hold their data; they should not have to serve it over HTTP to
download it again. Sources are paths or fsspec URLs (``file://``, ``s3://``, ``gs://``, ``hf://`` with
the matching extra installed), read through one fsspec filesystem (``sources.py``: what a source is;
``readers.py``: one reader per kind). This module turns what the readers yield into rows and shards.

- **Shards** (``.tar``, a folder of them, a glob or a brace pattern ``shards/{00000..00099}.tar``) on a
  local or mounted filesystem are read *in place*: the work directory holds a reference
  (``download/NNNNN.tar.ref``: path, size, mtime) and every stage reads the original tar, so no image
  byte is copied. Later stages refuse a referenced tar whose size or mtime changed since import (a
  result made from other bytes is never reused). Shards on an object store are streamed into the work
  directory once, byte for byte, because write and the copy verifier read many small byte ranges.
- **A folder** and **parquet with image bytes** become new shards: each sample keeps its original
  bytes (never re-encoded), plus ``.txt`` (caption) and ``.json`` (its origin).

The shard parquet records every source row, unreadable ones included (``status: failed_to_download``
with the reason), so the ledger accounts for every imported sample. Files are written under a
temporary name and renamed, and ``_stats.json`` is written last, as img2dataset does: a killed import
resumes where it stopped.

Keys of a folder are the relative path without its extension (``a/b/c.jpg`` -> ``a/b/c``; dots become
``_`` since WebDataset splits a member name at the first dot), so a removal in the ledger names the
file; keys of parquet rows are the file's relative path and the row. Keys of shards are the shards'
own, and must be unique across them: shards whose keys repeat are refused, or with ``rekey`` copied
in under ``<tar name>/<key>``. A key repeated inside one tar keeps its first sample; each later one
gets a row of its own (``<key>~2``, ...), so no key has two outcomes.

The files the import read are listed (name, size, mtime) in ``source_listing.parquet``: a rerun or
``dedup run`` on a changed source is refused, never "up to date".
"""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError
from dedup.core.files import atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.layout import WorkDir, shards_in
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.download.import_shards import import_shard, write_shard
from dedup.download.readers import (
    folder_samples,
    parquet_samples,
    rekeyed_samples,
)
from dedup.download.sources import (
    SOURCE_KINDS,
    Source,
    changes,
    describe_changes,
    hidden_count,
    listing,
    open_source,
    shard_files,
    source_identity,
)


def _check_unique(work: WorkDir, shard: int, tar_path: str, seen: dict[str, str]) -> None:
    """Keys are the ledger's identity: a key two tars share would get two outcomes. Refused with
    both places named (``--rekey`` imports such shards under keys prefixed with the tar's name)."""
    keys = pl.read_parquet(work.download_parquet(shard), columns=["key"])["key"].to_list()
    for key in keys:
        if key in seen and seen[key] != tar_path:
            raise UserError(
                f"{tar_path}: key '{key}' is also in {seen[key]}; keys must be unique across shards "
                "(shards made separately often all start at 000000): import with --rekey to key "
                "each sample as <tar name>/<key>"
            )
        seen[key] = tar_path


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
    """The import on the stage contract: a unit per source tar (its shard is written, or referenced,
    by ``import_shard``; done when its ``_stats.json`` exists), or for a folder or parquet files one
    unit that streams the source into shards of ``samples_per_shard`` (a folder's order, or a
    parquet's rows, is known only by reading it; the stream skips the shards a killed run finished).
    Units run on the driver: a source may be a local path only the driver sees.

    ``plan`` refuses what cannot be imported here (another source's work directory, a changed
    source) before anything is written; ``finish`` checks keys across shards and that the source
    did not change while it was read, then writes the summary."""

    name = "import"
    unit_name = "source shard"
    on_driver = True

    def __init__(
        self, source: str | Path, samples_per_shard: int, caption_col: str | None, rekey: bool
    ) -> None:
        self.samples_per_shard, self.caption_col, self.rekey = samples_per_shard, caption_col, rekey
        self.src = open_source(source)

    def outputs(self, work: WorkDir) -> list[Path]:
        return [work.download_summary, work.source_listing]

    def plan(self, work: WorkDir) -> Plan:
        src = self.src
        identity = source_identity(src)
        previous = read_json(work.download_summary) if work.download_summary.exists() else None
        if previous is not None and previous.get("kind") in SOURCE_KINDS:
            if previous.get("source") != identity:
                raise UserError(
                    f"{work.root}: already imported from {previous.get('source')}; "
                    "import another source into a new work directory"
                )
            check_source(work, src)
        elif previous is not None or shards_in(work.download_dir):
            raise UserError(f"{work.download_dir}: already holds shards; import into a new work directory")
        work.download_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(work.download_dir)  # a killed import's half-written files
        files = listing(src)
        if previous is None:
            with atomic_path(work.source_listing) as tmp:
                files.write_parquet(tmp)
        # Named before any shard is written, so a killed import resumes instead of being refused.
        write_json(work.download_summary, {"source": identity, "kind": src.kind, "complete": False})
        if src.kind == "shards":
            units = [Unit(i, payload=path) for i, path in enumerate(shard_files(src))]
        else:
            units = [Unit(0, payload=None)]
        return Plan(units, {"identity": identity, "source_files": files.height, "started": time.time()})

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return unit.payload is not None and work.download_stats(unit.index).exists()

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> Any:
        if unit.payload is None:
            return self._stream(work)
        if self.rekey:
            return write_shard(work, unit.index, rekeyed_samples(self.src, unit.payload))
        return import_shard(self.src, unit.payload, work, unit.index)

    def _stream(self, work: WorkDir) -> None:
        """A folder or parquet source into shards of ``samples_per_shard``, skipping finished ones."""
        done = set(shards_in(work.download_dir))
        if self.src.kind == "folder":
            samples = folder_samples(self.src)
        else:
            samples = parquet_samples(self.src, self.caption_col)
        shard = 0
        while True:
            chunk = itertools.islice(samples, self.samples_per_shard)
            first = next(chunk, None)
            if first is None:
                return
            part = itertools.chain([first], chunk)
            if shard in done:
                for _ in part:  # already imported: consumed, not kept
                    pass
            else:
                write_shard(work, shard, part)
            shard += 1

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        src = self.src
        shards = shards_in(work.download_dir)
        if src.kind == "shards" and not self.rekey:
            seen: dict[str, str] = {}
            for unit in plan.units:
                _check_unique(work, unit.index, unit.payload, seen)
        if _source_changed(work, src):
            raise UserError(f"{src.url}: changed while it was being imported; import it again")
        totals = {"count": 0, "successes": 0}
        for shard in shards:
            _add_stats(totals, read_json(work.download_stats(shard)))
        summary = {
            "source": plan.context["identity"],
            "kind": src.kind,
            "in_place": src.kind == "shards" and src.local and not self.rekey,
            "rekeyed": self.rekey,
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
) -> dict[str, Any]:
    """Import ``source`` into ``work``'s download folder; returns (and saves) the summary.

    A rerun of the same import resumes: finished shards (their ``_stats.json`` exists) are kept. A
    source that changed since is refused; an import refused for what the source holds leaves the
    work directory as it found it, so another source can be imported there.
    """
    fresh = not work.download_summary.exists() and not shards_in(work.download_dir)
    try:
        return run_stage(ImportStage(source, samples_per_shard, caption_col, rekey), work, progress=False)
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
