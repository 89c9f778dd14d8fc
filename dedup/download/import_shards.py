"""The import's shards: what the source readers yield becomes img2dataset-layout shards (tar, parquet
of every row with its status, ``_stats.json`` last). Each sample keeps its original bytes; an
unreadable one gets a row with the reason (dedup/download/ingest.py runs the import, the readers in
dedup/download/readers/ read the source, this module writes one shard).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from typing import Any

import polars as pl

from dedup.core.errors import describe
from dedup.core.files import atomic_path, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import write_marker
from dedup.core.shards import MAX_IMAGE_AREA
from dedup.download.readers import SourceSample


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


def row(key: str, url: str, caption: str | None, image: bytes | None, error: str | None) -> dict[str, Any]:
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


def finish_shard(work: WorkDir, shard: int, rows: list[dict[str, Any]], **marker: Any) -> dict[str, Any]:
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
            entry = row(s.key, s.origin, s.caption, s.image, s.error)
            rows.append(entry)
            if entry["status"] != "success":
                continue
            if s.members is not None:  # a rekeyed shard: every member as it was, under the new key
                for ext, data in s.members.items():
                    _add(tar, f"{s.key}.{ext}", data)
                continue
            _add(tar, f"{s.key}.{s.ext}", s.image)  # type: ignore[arg-type]
            if s.caption is not None:
                _add(tar, f"{s.key}.txt", s.caption.encode("utf-8"))
            meta = {k: entry[k] for k in ("key", "url", "caption", "width", "height", "exif_orientation")}
            _add(tar, f"{s.key}.json", json.dumps(meta, sort_keys=True).encode())
    return finish_shard(work, shard, rows)
