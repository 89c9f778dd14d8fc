"""One reader per source kind an import reads: a folder of images, parquet files with image bytes,
and WebDataset tars copied under new keys (``--rekey``). Each yields :class:`SourceSample` s, one per
sample it meets, unreadable ones included (with the error), so the import can give every one a
ledger row; tars read in place are described by ``ingest.import_shard`` from the tar itself.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dedup.core.errors import UserError
from dedup.core.shards import IMAGE_EXTENSIONS, iter_samples
from dedup.download.sources import (
    SIDECARS,
    Source,
    key_of,
    parquet_files,
    readable_name,
    relative,
    visible_files,
)


@dataclass
class SourceSample:
    key: str
    origin: str  # relative path or parquet file:row, recorded as the sample's url
    image: bytes | None
    ext: str
    caption: str | None = None
    error: str | None = None
    members: dict[str, bytes] | None = None  # a rekeyed shard's sample: every member, byte for byte


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


def folder_samples(source: Source) -> Iterator[SourceSample]:
    """Every visible file of a folder, one sample each (read when the shard is written, so a shard
    is never held in memory twice); a caption sidecar belongs to its image, any other file that is
    not an image gets a ledger row saying so."""
    fs, root = source.fs, source.paths[0]
    files = visible_files(source)
    images = {p.rsplit(".", 1)[0] for p in files if p.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS}
    if not images:
        raise UserError(
            f"{source.url}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    seen: dict[str, str] = {}
    for p in files:
        rel = relative(p, root)
        ext = p.rsplit(".", 1)[-1].lower() if "." in p.rsplit("/", 1)[-1] else ""
        is_image = ext in IMAGE_EXTENSIONS
        if not is_image and ext in SIDECARS and p.rsplit(".", 1)[0] in images:
            continue  # a caption, read with its image
        printable = readable_name(rel)
        key = key_of(printable) if is_image else printable.replace(".", "_")
        if key in seen:
            raise UserError(
                f"{source.url}: {seen[key]} and {printable} map to the same key '{key}'; rename one"
            )
        seen[key] = printable
        if printable != rel:  # a key, a url and a tar member must be text: the file is named, not read
            yield SourceSample(
                key, printable, None, "", error="file name is not UTF-8; rename it to import it"
            )
            continue
        if not is_image:
            yield SourceSample(key, rel, None, "", error=f"not an image file ({ext or 'no extension'})")
            continue
        try:
            data = Path(p).read_bytes() if source.local else fs.cat_file(p)  # fsspec costs 2x locally
            yield SourceSample(key, rel, data, ext, _sidecar_caption(fs, p))
        except OSError as err:
            yield SourceSample(key, rel, None, "", error=f"unreadable: {err.strerror or err}")


def _image_column(schema: Any, path: str) -> str:
    import pyarrow as pa

    for name in ("image", "img", "jpg", "png"):
        if name in schema.names:
            t = schema.field(name).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):
                return name
            if pa.types.is_struct(t):
                fields = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
                kind = fields.get("bytes")
                if kind is None or not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
                    raise UserError(
                        f"{path}: column '{name}' is a struct without binary 'bytes' "
                        f"(fields: {', '.join(f'{k}: {v}' for k, v in fields.items())})"
                    )
                return name
    raise UserError(
        f"{path}: no image column (looked for a struct with bytes/path or a binary column named "
        f"image, img, jpg or png; columns: {', '.join(schema.names[:12])})"
    )


def parquet_samples(source: Source, caption_col: str | None) -> Iterator[SourceSample]:
    """Rows of Hugging Face style parquet files (``image`` struct with ``bytes``/``path``), streamed
    a batch at a time. Keys are the file's path below the source's root and the row number, so two
    splits' ``data-00000.parquet`` never share a key."""
    import pyarrow.parquet as pq

    fs, root = source.fs, source.root
    for path in parquet_files(source):
        rel = relative(path, root)
        with fs.open(path, "rb") as handle:
            try:
                pf = pq.ParquetFile(handle, pre_buffer=False)
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
            for batch in pf.iter_batches(batch_size=64, columns=[column] + ([text] if text else [])):
                images = batch.column(column).to_pylist()
                captions = batch.column(text).to_pylist() if text else [None] * len(images)
                for value, caption in zip(images, captions, strict=True):
                    origin = f"{rel}:{row}"
                    key = f"{key_of(rel)}/{row:09d}"
                    data, inner = (
                        (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
                    )
                    if not isinstance(data, (bytes, bytearray, type(None))) or not isinstance(
                        inner, (str, type(None))
                    ):
                        raise UserError(
                            f"{path}: row {row}: column '{column}' does not hold image bytes (bytes is "
                            f"{type(data).__name__}, path is {type(inner).__name__})"
                        )
                    ext = inner.rsplit(".", 1)[-1].lower() if inner and "." in inner else ""
                    if data is None:
                        yield SourceSample(key, origin, None, "", error="no image bytes in this row")
                    else:
                        yield SourceSample(
                            key, origin, bytes(data), ext or _sniff(bytes(data)), text_of(caption)
                        )
                    row += 1


def text_of(value: Any) -> str | None:
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


# A repeated key's later sample: a row of its own (this suffix and the occurrence), never a second
# outcome for the key.
REPEAT_MARK = "~"


def sample_url(sample: Any, default: str) -> str:
    meta = sample.members.get("json")
    if meta:
        try:
            value = json.loads(meta)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return default
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            return value["url"]
    return default


def _shard_prefix(tar_path: str) -> str:
    return key_of(tar_path.rsplit("/", 1)[-1]) + "/"


def repeat_key(key: str, occurrence: int) -> str:
    return f"{key}{REPEAT_MARK}{occurrence}"


def repeat_error(key: str, tar_path: str, sample: Any) -> str:
    return (
        f"repeated key: another sample named {key} in {tar_path} (bytes {sample.start}-{sample.end}); "
        "only the first is imported"
    )


def rekeyed_samples(source: Source, tar_path: str) -> Iterator[SourceSample]:
    """A tar's samples under keys prefixed with its name (``00000/000123``), every member kept."""
    prefix = _shard_prefix(tar_path)
    name = tar_path.rsplit("/", 1)[-1]
    counts: dict[str, int] = {}
    with source.fs.open(tar_path, "rb") as handle:
        try:
            for sample in iter_samples(handle):
                n = counts[sample.key] = counts.get(sample.key, 0) + 1
                key = prefix + sample.key
                url = sample_url(sample, f"{name}#{sample.key}")
                if n > 1:
                    error = repeat_error(sample.key, tar_path, sample)
                    yield SourceSample(repeat_key(key, n), url, None, "", error=error)
                elif sample.image is None:
                    yield SourceSample(key, url, None, "", error="no image member")
                else:
                    yield SourceSample(
                        key, url, sample.image, sample.image_ext or "", sample.caption, members=sample.members
                    )
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"{tar_path}: not a readable tar ({str(err).splitlines()[0]})") from None
