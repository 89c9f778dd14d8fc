"""Import stage: data a user already has (a folder of images, parquet files with image bytes) into a
work directory's ``download/`` folder, in img2dataset's layout, so every later stage runs unchanged.

Most users of a dedup tool already hold their data; they should not have to serve it over HTTP to
download it again. Each source sample becomes one WebDataset sample whose image member holds the
original bytes (never re-encoded), plus ``.txt`` (caption) and ``.json`` (its origin). The shard
parquet records every source row, unreadable ones included (``status: failed_to_download`` with the
reason), so the ledger accounts for every imported sample. A shard is written under a temporary name
and renamed, and ``_stats.json`` is written last, as img2dataset does: a killed import resumes.

Keys are the relative path without its extension (``a/b/c.jpg`` -> ``a/b/c``; dots become ``_``
since WebDataset splits a member name at the first dot), so a removal in the ledger names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dedup.errors import UserError
from dedup.layout import WorkDir, atomic_path, locked, write_json, write_marker
from dedup.shards import IMAGE_EXTENSIONS

SOURCE_KINDS = ("folder", "parquet")
SIDECARS = ("txt", "json")


@dataclass
class SourceSample:
    key: str
    origin: str  # relative path or parquet file:row, recorded as the sample's url
    image: bytes | None
    ext: str
    caption: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def source_kind(source: Path) -> str:
    if source.is_dir():
        has_parquet = any(source.glob("*.parquet"))
        has_images = any(_image_files(source))
        if has_parquet and not has_images:
            return "parquet"
        return "folder"
    if source.suffix == ".parquet":
        return "parquet"
    raise UserError(f"{source}: not a folder of images or a .parquet file")


def _image_files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and not _hidden(p, root):
            yield p


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def key_of(relative: str) -> str:
    """WebDataset key of a relative path: extension dropped, dots inside names made underscores."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    return stem.replace(".", "_")


def _sidecar_caption(image: Path) -> str | None:
    txt = image.with_suffix(".txt")
    if txt.is_file():
        return txt.read_bytes().decode("utf-8", errors="replace").strip()
    js = image.with_suffix(".json")
    if js.is_file():
        try:
            data = json.loads(js.read_bytes().decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            return None
        if isinstance(data, dict):
            for name in ("caption", "text", "TEXT", "title"):
                if isinstance(data.get(name), str):
                    return data[name]
    return None


def _exif_orientation(data: bytes) -> int | None:
    """EXIF orientation tag (1-8) when present; recorded, never applied to the bytes."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112)
        return int(value) if value else None
    except Exception:
        return None


def folder_samples(root: Path) -> Iterator[SourceSample]:
    files = list(_image_files(root))
    if not files:
        raise UserError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    seen: dict[str, str] = {}
    for p in files:
        rel = p.relative_to(root).as_posix()
        key = key_of(rel)
        if key in seen:
            raise UserError(f"{root}: {seen[key]} and {rel} map to the same key '{key}'; rename one")
        seen[key] = rel
        try:
            data = p.read_bytes()
            yield SourceSample(key, rel, data, p.suffix.lower().lstrip("."), _sidecar_caption(p))
        except OSError as err:
            yield SourceSample(key, rel, None, "", error=f"unreadable: {err.strerror or err}")


def _image_column(schema: Any, path: Path) -> str:
    import pyarrow as pa

    for name in ("image", "img", "jpg", "png"):
        if name in schema.names:
            t = schema.field(name).type
            if pa.types.is_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
                return name
    raise UserError(
        f"{path}: no image column (looked for a struct with bytes/path or a binary column named "
        f"image, img, jpg or png; columns: {', '.join(schema.names[:12])})"
    )


def parquet_samples(source: Path, caption_col: str | None) -> Iterator[SourceSample]:
    """Rows of Hugging Face style parquet files (``image`` struct with ``bytes``/``path``), streamed."""
    import pyarrow.parquet as pq

    files = sorted(source.glob("*.parquet")) if source.is_dir() else [source]
    if not files:
        raise UserError(f"{source}: no .parquet files")
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except Exception as err:
            raise UserError(f"{path}: cannot read as parquet ({str(err).splitlines()[0]})") from None
        column = _image_column(pf.schema_arrow, path)
        text = caption_col
        if text is None:
            text = next((c for c in ("text", "caption", "TEXT") if c in pf.schema_arrow.names), None)
        elif text not in pf.schema_arrow.names:
            raise UserError(f"{path}: no column '{text}' (columns: {', '.join(pf.schema_arrow.names[:12])})")
        row = 0
        for batch in pf.iter_batches(batch_size=256, columns=[column] + ([text] if text else [])):
            images = batch.column(column).to_pylist()
            captions = batch.column(text).to_pylist() if text else [None] * len(images)
            for value, caption in zip(images, captions, strict=True):
                origin = f"{path.name}:{row}"
                key = f"{key_of(path.name)}/{row:09d}"
                data, name = (
                    (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
                )
                ext = (name or "").rsplit(".", 1)[-1].lower() if name and "." in name else ""
                if data is None:
                    yield SourceSample(key, origin, None, "", error="no image bytes in this row")
                else:
                    yield SourceSample(key, origin, bytes(data), ext or _sniff(bytes(data)), _text(caption))
                row += 1


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return "jpg"


def _image_size(data: bytes) -> tuple[int | None, int | None, str | None]:
    """(width, height, error) from the header only: a failure becomes a ledger row, not a crash."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height, None
    except Exception as err:
        return (
            None,
            None,
            f"not an image: {str(err).splitlines()[0][:120] if str(err) else type(err).__name__}",
        )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical inputs
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(work: WorkDir, shard: int, samples: list[SourceSample]) -> dict[str, Any]:
    """One shard: tar of the readable samples, parquet of all of them, then ``_stats.json``."""
    rows = []
    with (
        atomic_path(work.download_tar(shard)) as tmp,
        tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for s in samples:
            width = height = None
            error = s.error
            if s.image is not None and error is None:
                width, height, error = _image_size(s.image)
            ok = error is None and s.image is not None
            row = {
                "key": s.key,
                "url": s.origin,
                "caption": s.caption,
                "status": "success" if ok else "failed_to_download",
                "error_message": error,
                "width": width,
                "height": height,
                "original_width": width,
                "original_height": height,
                "exif_orientation": _exif_orientation(s.image) if ok else None,
                "sha256": hashlib.sha256(s.image).hexdigest() if ok else None,
            }
            rows.append(row)
            if not ok:
                continue
            _add(tar, f"{s.key}.{s.ext}", s.image)  # type: ignore[arg-type]
            if s.caption is not None:
                _add(tar, f"{s.key}.txt", s.caption.encode("utf-8"))
            meta = {k: row[k] for k in ("key", "url", "caption", "width", "height", "exif_orientation")}
            _add(tar, f"{s.key}.json", json.dumps(meta, sort_keys=True).encode())
    schema = {
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
    with atomic_path(work.download_parquet(shard)) as tmp:
        pl.DataFrame(rows, schema=schema).write_parquet(tmp)
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
    return stats


@locked
def run_import(
    source: str | Path, work: WorkDir, samples_per_shard: int = 10_000, caption_col: str | None = None
) -> dict[str, Any]:
    """Import ``source`` into ``work``'s download folder; returns (and saves) the summary."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if work.download_dir.exists() and any(work.download_dir.glob("*.tar")):
        raise UserError(f"{work.download_dir}: already holds shards; import into a new work directory")
    kind = source_kind(source)
    started = time.time()
    samples = folder_samples(source) if kind == "folder" else parquet_samples(source, caption_col)
    work.download_dir.mkdir(parents=True, exist_ok=True)
    totals = {"count": 0, "successes": 0}
    shard, batch = 0, []
    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            _finish(work, shard, batch, totals)
            shard, batch = shard + 1, []
    if batch:
        _finish(work, shard, batch, totals)
    summary = {
        "source": str(source.resolve()),
        "kind": kind,
        "input_rows": totals["count"],
        "downloaded": totals["successes"],
        "failed": totals["count"] - totals["successes"],
        "shards": shard + (1 if batch else 0),
        "seconds": round(time.time() - started, 2),
    }
    write_json(work.download_summary, summary)
    return summary


def _finish(work: WorkDir, shard: int, batch: list[SourceSample], totals: dict[str, int]) -> None:
    stats = write_shard(work, shard, batch)
    totals["count"] += stats["count"]
    totals["successes"] += stats["successes"]
    write_marker(work, "download", shard, {"import": True}, rows=stats["count"], successes=stats["successes"])


def format_import_summary(s: dict[str, Any]) -> str:
    return (
        f"imported {s['downloaded']} of {s['input_rows']} images from {s['kind']} {s['source']} "
        f"into {s['shards']} shards ({s['failed']} unreadable, each with a ledger row); {s['seconds']:.1f} s"
    )
