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

import hashlib
import io
import itertools
import json
import shutil
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError, describe
from dedup.core.files import atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.layout import WorkDir, shards_in
from dedup.core.markers import write_marker
from dedup.core.shards import IMAGE_EXTENSIONS, MAX_IMAGE_AREA, iter_samples
from dedup.download.readers import (
    SourceSample,
    folder_samples,
    parquet_samples,
    rekeyed_samples,
    repeat_error,
    repeat_key,
    sample_url,
    text_of,
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


def _image_header(data: bytes) -> tuple[int | None, int | None, int | None, str | None]:
    """(width, height, EXIF orientation, error) from one look at the header (nothing is decoded): a
    failure becomes a ledger row, not a crash; the orientation is recorded, never applied."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # checked by area
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.width, im.height
            try:
                value = im.getexif().get(0x0112)
                orientation = int(value) if value else None
            except Exception:
                orientation = None
            return width, height, orientation, None
    except Exception as err:
        return None, None, None, f"not an image: {describe(err)}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # ustar where the name fits (its plain headers cost a third of pax's), pax for longer names
    tar.format = tarfile.USTAR_FORMAT if len(name.encode("utf-8")) < 100 else tarfile.PAX_FORMAT
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical inputs
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


TOO_LARGE = "image area too large"
_PARQUET_SCHEMA = {
    "key": pl.String,
    "url": pl.String,
    "caption": pl.String,
    "status": pl.String,
    "error_message": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "original_width": pl.Int64,
    "original_height": pl.Int64,
    "exif_orientation": pl.Int64,
    "sha256": pl.String,
}


def _row(key: str, url: str, caption: str | None, image: bytes | None, error: str | None) -> dict[str, Any]:
    width = height = orientation = None
    if image is not None and error is None:
        width, height, orientation, error = _image_header(image)
        if width is not None and height is not None and width * height > MAX_IMAGE_AREA:
            error = f"{TOO_LARGE} ({width} x {height} pixels; the limit is {MAX_IMAGE_AREA:,})"
    ok = error is None and image is not None
    return {
        "key": key,
        "url": url,
        "caption": caption,
        "status": "success" if ok else "failed_to_download",
        "error_message": error,
        "width": width,
        "height": height,
        "original_width": width,
        "original_height": height,
        "exif_orientation": orientation if ok else None,
        "sha256": hashlib.sha256(image).hexdigest() if ok else None,  # type: ignore[arg-type]
    }


def _finish_shard(work: WorkDir, shard: int, rows: list[dict[str, Any]], **marker: Any) -> dict[str, Any]:
    """The shard's parquet (every source row), then ``_stats.json`` and the marker, in that order."""
    with atomic_path(work.download_parquet(shard)) as tmp:
        pl.DataFrame(rows, schema=_PARQUET_SCHEMA).write_parquet(tmp)
    successes = sum(r["status"] == "success" for r in rows)
    stats = {
        "count": len(rows),
        "successes": successes,
        "failed_to_download": len(rows) - successes,
        "failed_to_resize": 0,
        "status_dict": {
            "success": successes,
            **({"failed": len(rows) - successes} if len(rows) > successes else {}),
        },
    }
    write_json(work.download_stats(shard), stats)
    write_marker(work, "download", shard, {"import": True}, rows=len(rows), successes=successes, **marker)
    return stats


def write_shard(work: WorkDir, shard: int, samples: Iterable[SourceSample]) -> dict[str, Any]:
    """One new shard, streamed: tar of the readable samples, parquet of all of them, then
    ``_stats.json``. Only the rows are held, never the shard's images."""
    rows = []
    with (
        atomic_path(work.download_tar(shard)) as tmp,
        tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for s in samples:
            row = _row(s.key, s.origin, s.caption, s.image, s.error)
            rows.append(row)
            if row["status"] != "success":
                continue
            if s.members is not None:  # a rekeyed shard: every member as it was, under the new key
                for ext, data in s.members.items():
                    _add(tar, f"{s.key}.{ext}", data)
                continue
            _add(tar, f"{s.key}.{s.ext}", s.image)  # type: ignore[arg-type]
            if s.caption is not None:
                _add(tar, f"{s.key}.txt", s.caption.encode("utf-8"))
            meta = {k: row[k] for k in ("key", "url", "caption", "width", "height", "exif_orientation")}
            _add(tar, f"{s.key}.json", json.dumps(meta, sort_keys=True).encode())
    return _finish_shard(work, shard, rows)


def _failed_rows_beside(fs: Any, tar_path: str, present: set[str]) -> list[dict[str, Any]]:
    """img2dataset's failed rows from the parquet beside a tar: inputs that never reached the tar still
    get a ledger row (``download_failed`` with img2dataset's message)."""
    import pyarrow.parquet as pq

    beside = tar_path[: -len(".tar")] + ".parquet"
    if not fs.isfile(beside):
        return []
    with fs.open(beside, "rb") as handle:
        try:
            table = pq.read_table(handle)
        except Exception as err:
            raise UserError(f"{beside}: cannot read as parquet ({str(err).splitlines()[0]})") from None
    if not {"key", "status"} <= set(table.column_names):
        return []
    out = []
    for r in table.to_pylist():
        if r["status"] == "success" or r["key"] in present:
            continue
        out.append(
            _row(
                str(r["key"]),
                text_of(r.get("url")) or "",
                text_of(r.get("caption")),
                None,
                text_of(r.get("error_message")) or str(r["status"]),
            )
        )
    return out


def import_shard(source: Source, tar_path: str, work: WorkDir, shard: int) -> dict[str, Any]:
    """Reference (local) or stream in (object store) one tar, then describe every sample of it:
    one row per sample, a repeated key's later samples included (each under its own key)."""
    fs = source.fs
    if source.local:
        local = Path(tar_path).resolve()
        stat = local.stat()
        write_json(
            work.download_ref(shard), {"path": str(local), "size": stat.st_size, "mtime": stat.st_mtime}
        )
    else:
        with (
            atomic_path(work.download_tar(shard)) as tmp,
            fs.open(tar_path, "rb") as src,
            open(tmp, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    rows: list[dict[str, Any]] = []
    name = tar_path.rsplit("/", 1)[-1]
    counts: dict[str, int] = {}
    try:
        for sample in iter_samples(work.input_tar(shard)):
            n = counts[sample.key] = counts.get(sample.key, 0) + 1
            url = sample_url(sample, f"{name}#{sample.key}")
            if n > 1:
                rows.append(
                    _row(
                        repeat_key(sample.key, n),
                        url,
                        None,
                        None,
                        repeat_error(sample.key, tar_path, sample),
                    )
                )
                continue
            error = None if sample.image is not None else "no image member"
            rows.append(_row(sample.key, url, sample.caption, sample.image, error))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{tar_path}: not a readable tar ({str(err).splitlines()[0]})") from None
    if rows and all(r["error_message"] == "no image member" for r in rows):
        raise UserError(
            f"{tar_path}: not a WebDataset of images (no member ends in {', '.join(IMAGE_EXTENSIONS)})"
        )
    # In a shard everything is "downloaded"; an image that does not decode (or is too large to) is
    # embed's decode_failed, as for a downloaded shard, so the row stays a success here.
    for r in rows:
        if r["error_message"] and r["error_message"].startswith(("not an image", TOO_LARGE)):
            r["status"], r["error_message"] = "success", None
    rows += _failed_rows_beside(fs, tar_path, {r["key"] for r in rows})
    return _finish_shard(work, shard, rows, source=f"{source.url if not source.local else tar_path}")


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
    src = open_source(source)
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
    fresh = previous is None
    started = time.time()
    work.download_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work.download_dir)  # a killed import's half-written files
    try:
        files = listing(src)
        if fresh:
            with atomic_path(work.source_listing) as tmp:
                files.write_parquet(tmp)
        # Named before any shard is written, so a killed import resumes instead of being refused.
        write_json(work.download_summary, {"source": identity, "kind": src.kind, "complete": False})
        totals, shards = _import_all(src, work, samples_per_shard, caption_col, rekey)
        if _source_changed(work, src):
            raise UserError(f"{src.url}: changed while it was being imported; import it again")
    except UserError:
        if fresh:
            _forget_import(work)
        raise
    summary = {
        "source": identity,
        "kind": src.kind,
        "in_place": src.kind == "shards" and src.local and not rekey,
        "rekeyed": rekey,
        "input_rows": totals["count"],
        "downloaded": totals["successes"],
        "failed": totals["count"] - totals["successes"],
        "shards": shards,
        "source_files": files.height,
        "hidden_not_imported": hidden_count(src),
        "seconds": round(time.time() - started, 2),
        "complete": True,
    }
    write_json(work.download_summary, summary)
    return summary


def _forget_import(work: WorkDir) -> None:
    """Undo a refused import: its shards, summary and listing (a refusal recurs on every rerun, so
    what it wrote could only block the work directory)."""
    shutil.rmtree(work.download_dir, ignore_errors=True)
    shutil.rmtree(work.manifest_dir / "download", ignore_errors=True)
    for path in (work.download_summary, work.source_listing):
        path.unlink(missing_ok=True)


def _import_all(
    src: Source, work: WorkDir, samples_per_shard: int, caption_col: str | None, rekey: bool
) -> tuple[dict[str, int], int]:
    done = set(shards_in(work.download_dir))
    totals = {"count": 0, "successes": 0}
    shards = 0
    if src.kind == "shards":
        seen: dict[str, str] = {}
        for shard, path in enumerate(shard_files(src)):
            if shard in done:
                stats = read_json(work.download_stats(shard))
            elif rekey:
                stats = write_shard(work, shard, rekeyed_samples(src, path))
            else:
                stats = import_shard(src, path, work, shard)
            if not rekey:
                _check_unique(work, shard, path, seen)
            _add_stats(totals, stats)
            shards += 1
        return totals, shards
    samples = folder_samples(src) if src.kind == "folder" else parquet_samples(src, caption_col)
    while True:
        chunk = itertools.islice(samples, samples_per_shard)
        first = next(chunk, None)
        if first is None:
            return totals, shards
        part = itertools.chain([first], chunk)
        if shards in done:
            stats = read_json(work.download_stats(shards))
            for _ in part:  # already imported: consumed, not kept
                pass
        else:
            stats = write_shard(work, shards, part)
        _add_stats(totals, stats)
        shards += 1


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
