"""Import stage: data a user already has (WebDataset shards, a folder of images, parquet files with
image bytes) into a work directory's ``download/`` folder, in img2dataset's layout, so every later
stage runs unchanged.

Most users of a dedup tool already hold their data; they should not have to serve it over HTTP to
download it again. Sources are paths or fsspec URLs (``file://``, ``s3://``, ``gs://``, ``hf://`` with
the matching extra installed), read through one fsspec filesystem.

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
file. Keys of shards are the shards' own.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir, atomic_path, locked, read_json, shards_in, write_json
from dedup.core.markers import write_marker
from dedup.core.shards import IMAGE_EXTENSIONS, iter_samples

SOURCE_KINDS = ("shards", "folder", "parquet")
SIDECARS = ("txt", "json")
_GLOB_CHARS = "*?["


@dataclass
class SourceSample:
    key: str
    origin: str  # relative path or parquet file:row, recorded as the sample's url
    image: bytes | None
    ext: str
    caption: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """Where the data is: a filesystem and the paths on it the source names (one or many)."""

    url: str
    fs: Any
    paths: tuple[str, ...]
    kind: str

    @property
    def local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)


def _expand(url: str) -> list[str]:
    """Brace patterns first (``{00000..00099}``, as webdataset and img2dataset accept), then globs."""
    from braceexpand import braceexpand

    return list(braceexpand(url)) if "{" in url else [url]


def open_source(url: str | Path) -> Source:
    """Resolve ``url`` to a :class:`Source`; one-line errors for what cannot be a source."""
    import fsspec

    text = str(url)
    try:
        fs, _ = fsspec.core.url_to_fs(_expand(text)[0])
    except (ImportError, ValueError) as err:
        raise UserError(f"{text}: cannot open ({str(err).splitlines()[0]})") from None
    paths: list[str] = []
    for part in _expand(text):
        _, path = fsspec.core.url_to_fs(part)
        if any(c in path for c in _GLOB_CHARS):
            paths.extend(sorted(fs.glob(path)))
        elif fs.exists(path):
            paths.append(path)
        else:
            raise UserError(f"{part}: no such file or folder")
    if not paths:
        raise UserError(f"{text}: the pattern matches no file")
    return Source(text, fs, tuple(paths), source_kind(fs, paths, text))


def source_kind(fs: Any, paths: list[str], text: str) -> str:
    if len(paths) == 1 and fs.isdir(paths[0]):
        names = [p for p in fs.ls(paths[0], detail=False)]
        if any(p.endswith(".tar") for p in names):
            return "shards"
        has_parquet = any(p.endswith(".parquet") for p in names)
        if has_parquet and not any(True for _ in _image_files(fs, paths[0])):
            return "parquet"
        return "folder"
    suffixes = {p.rsplit(".", 1)[-1].lower() for p in paths}
    if suffixes == {"tar"}:
        return "shards"
    if suffixes == {"parquet"}:
        return "parquet"
    raise UserError(
        f"{text}: not WebDataset shards (.tar), a folder of images or .parquet file(s) "
        f"(found {', '.join(sorted(suffixes))})"
    )


def _relative(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1 :]


def _image_files(fs: Any, root: str) -> Iterator[str]:
    for p in sorted(fs.find(root)):
        rel = _relative(p, root)
        if p.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and not any(
            part.startswith(".") for part in rel.split("/")
        ):
            yield p


def key_of(relative: str) -> str:
    """WebDataset key of a relative path: extension dropped, dots inside names made underscores."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    return stem.replace(".", "_")


def _sidecar_caption(fs: Any, image: str) -> str | None:
    stem = image.rsplit(".", 1)[0]
    if fs.isfile(stem + ".txt"):
        return fs.cat_file(stem + ".txt").decode("utf-8", errors="replace").strip()
    if fs.isfile(stem + ".json"):
        try:
            data = json.loads(fs.cat_file(stem + ".json").decode("utf-8", errors="replace"))
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


def folder_samples(source: Source) -> Iterator[SourceSample]:
    fs, root = source.fs, source.paths[0]
    files = list(_image_files(fs, root))
    if not files:
        raise UserError(
            f"{source.url}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    seen: dict[str, str] = {}
    for p in files:
        rel = _relative(p, root)
        key = key_of(rel)
        if key in seen:
            raise UserError(f"{source.url}: {seen[key]} and {rel} map to the same key '{key}'; rename one")
        seen[key] = rel
        try:
            data = fs.cat_file(p)
            yield SourceSample(key, rel, data, p.rsplit(".", 1)[-1].lower(), _sidecar_caption(fs, p))
        except OSError as err:
            yield SourceSample(key, rel, None, "", error=f"unreadable: {err.strerror or err}")


def _image_column(schema: Any, path: str) -> str:
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


def parquet_samples(source: Source, caption_col: str | None) -> Iterator[SourceSample]:
    """Rows of Hugging Face style parquet files (``image`` struct with ``bytes``/``path``), streamed."""
    import pyarrow.parquet as pq

    fs = source.fs
    if len(source.paths) == 1 and fs.isdir(source.paths[0]):
        files = sorted(p for p in fs.ls(source.paths[0], detail=False) if p.endswith(".parquet"))
    else:
        files = list(source.paths)
    if not files:
        raise UserError(f"{source.url}: no .parquet files")
    for path in files:
        name = path.rsplit("/", 1)[-1]
        with fs.open(path, "rb") as handle:
            try:
                pf = pq.ParquetFile(handle)
            except Exception as err:
                raise UserError(f"{path}: cannot read as parquet ({str(err).splitlines()[0]})") from None
            column = _image_column(pf.schema_arrow, path)
            text = caption_col
            if text is None:
                text = next((c for c in ("text", "caption", "TEXT") if c in pf.schema_arrow.names), None)
            elif text not in pf.schema_arrow.names:
                raise UserError(
                    f"{path}: no column '{text}' (columns: {', '.join(pf.schema_arrow.names[:12])})"
                )
            row = 0
            for batch in pf.iter_batches(batch_size=256, columns=[column] + ([text] if text else [])):
                images = batch.column(column).to_pylist()
                captions = batch.column(text).to_pylist() if text else [None] * len(images)
                for value, caption in zip(images, captions, strict=True):
                    origin = f"{name}:{row}"
                    key = f"{key_of(name)}/{row:09d}"
                    data, inner = (
                        (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
                    )
                    ext = inner.rsplit(".", 1)[-1].lower() if inner and "." in inner else ""
                    if data is None:
                        yield SourceSample(key, origin, None, "", error="no image bytes in this row")
                    else:
                        yield SourceSample(
                            key, origin, bytes(data), ext or _sniff(bytes(data)), _text(caption)
                        )
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
    width = height = None
    if image is not None and error is None:
        width, height, error = _image_size(image)
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
        "exif_orientation": _exif_orientation(image) if ok else None,
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


def write_shard(work: WorkDir, shard: int, samples: list[SourceSample]) -> dict[str, Any]:
    """One new shard: tar of the readable samples, parquet of all of them, then ``_stats.json``."""
    rows = []
    with (
        atomic_path(work.download_tar(shard)) as tmp,
        tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for s in samples:
            row = _row(s.key, s.origin, s.caption, s.image, s.error)
            rows.append(row)
            if row["status"] != "success":
                continue
            _add(tar, f"{s.key}.{s.ext}", s.image)  # type: ignore[arg-type]
            if s.caption is not None:
                _add(tar, f"{s.key}.txt", s.caption.encode("utf-8"))
            meta = {k: row[k] for k in ("key", "url", "caption", "width", "height", "exif_orientation")}
            _add(tar, f"{s.key}.json", json.dumps(meta, sort_keys=True).encode())
    return _finish_shard(work, shard, rows)


def shard_files(source: Source) -> list[str]:
    """The source's tars in order: a folder's sorted, a pattern's in the order it names them."""
    fs = source.fs
    if len(source.paths) == 1 and fs.isdir(source.paths[0]):
        return sorted(p for p in fs.ls(source.paths[0], detail=False) if p.endswith(".tar"))
    return list(source.paths)


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
                _text(r.get("url")) or "",
                _text(r.get("caption")),
                None,
                _text(r.get("error_message")) or str(r["status"]),
            )
        )
    return out


def _sample_url(sample: Any, default: str) -> str:
    meta = sample.members.get("json")
    if meta:
        try:
            value = json.loads(meta)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return default
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            return value["url"]
    return default


def import_shard(source: Source, tar_path: str, work: WorkDir, shard: int) -> dict[str, Any]:
    """Reference (local) or stream in (object store) one tar, then describe every sample of it."""
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
    try:
        for sample in iter_samples(work.input_tar(shard)):
            error = None if sample.image is not None else "no image member"
            rows.append(
                _row(
                    sample.key,
                    _sample_url(sample, f"{name}#{sample.key}"),
                    sample.caption,
                    sample.image,
                    error,
                )
            )
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{tar_path}: not a readable tar ({str(err).splitlines()[0]})") from None
    if rows and all(r["error_message"] == "no image member" for r in rows):
        raise UserError(
            f"{tar_path}: not a WebDataset of images (no member ends in {', '.join(IMAGE_EXTENSIONS)})"
        )
    # In a shard everything is "downloaded"; an image that does not decode is embed's decode_failed,
    # as for a downloaded shard, so the row stays a success here.
    for r in rows:
        if r["error_message"] and r["error_message"].startswith("not an image"):
            r["status"], r["error_message"] = "success", None
    rows += _failed_rows_beside(fs, tar_path, {r["key"] for r in rows})
    return _finish_shard(work, shard, rows, source=f"{source.url if not source.local else tar_path}")


@locked
def run_import(
    source: str | Path, work: WorkDir, samples_per_shard: int = 10_000, caption_col: str | None = None
) -> dict[str, Any]:
    """Import ``source`` into ``work``'s download folder; returns (and saves) the summary.

    A rerun of the same import resumes: finished shards (their ``_stats.json`` exists) are kept.
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
    elif previous is not None or shards_in(work.download_dir):
        raise UserError(f"{work.download_dir}: already holds shards; import into a new work directory")
    started = time.time()
    work.download_dir.mkdir(parents=True, exist_ok=True)
    # Named before any shard is written, so a killed import resumes instead of being refused.
    write_json(work.download_summary, {"source": identity, "kind": src.kind, "complete": False})
    done = set(shards_in(work.download_dir))
    totals = {"count": 0, "successes": 0}
    shards = 0
    if src.kind == "shards":
        for shard, path in enumerate(shard_files(src)):
            stats = (
                read_json(work.download_stats(shard))
                if shard in done
                else import_shard(src, path, work, shard)
            )
            totals["count"] += stats["count"]
            totals["successes"] += stats["successes"]
            shards += 1
    else:
        samples = folder_samples(src) if src.kind == "folder" else parquet_samples(src, caption_col)
        batch: list[SourceSample] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == samples_per_shard:
                _finish(work, shards, batch, totals, done)
                shards, batch = shards + 1, []
        if batch:
            _finish(work, shards, batch, totals, done)
            shards += 1
    summary = {
        "source": identity,
        "kind": src.kind,
        "in_place": src.kind == "shards" and src.local,
        "input_rows": totals["count"],
        "downloaded": totals["successes"],
        "failed": totals["count"] - totals["successes"],
        "shards": shards,
        "seconds": round(time.time() - started, 2),
        "complete": True,
    }
    write_json(work.download_summary, summary)
    return summary


def source_identity(src: Source) -> str:
    """How a source is named in the summary: an absolute path locally, the URL as given otherwise."""
    if src.local and "{" not in src.url and not any(c in src.url for c in _GLOB_CHARS):
        return str(Path(src.paths[0]).resolve())
    return src.url


def _finish(
    work: WorkDir, shard: int, batch: list[SourceSample], totals: dict[str, int], done: set[int]
) -> None:
    stats = read_json(work.download_stats(shard)) if shard in done else write_shard(work, shard, batch)
    totals["count"] += stats["count"]
    totals["successes"] += stats["successes"]


def format_import_summary(s: dict[str, Any]) -> str:
    where = " (read in place: no image bytes copied)" if s.get("in_place") else ""
    return (
        f"imported {s['downloaded']} of {s['input_rows']} images from {s['kind']} {s['source']} "
        f"into {s['shards']} shards{where} ({s['failed']} unreadable, each with a ledger row); "
        f"{s['seconds']:.1f} s"
    )
