"""The import's shards: what the source readers yield becomes img2dataset-layout shards (tar, parquet
of every row with its status, ``_stats.json`` last), or a reference to a tar read in place. Each
sample keeps its original bytes; an unreadable one gets a row with the reason (dedup/download/ingest.py
runs the import, this module writes one shard).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError, describe
from dedup.core.files import atomic_path, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import write_marker
from dedup.core.shards import IMAGE_EXTENSIONS, MAX_IMAGE_AREA, iter_samples
from dedup.download.readers import (
    SourceSample,
    repeat_error,
    repeat_key,
    sample_url,
    text_of,
)
from dedup.download.sources import (
    Source,
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
