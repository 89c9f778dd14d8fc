"""Parquet files with image bytes (Hugging Face style: an ``image`` struct with ``bytes``/``path``, or
a binary column), a unit per file: its footer gives the row count, so the file's shards (of
``samples_per_shard`` rows) are numbered before any is written. Rows are streamed a batch at a time
(memory stays bounded whatever the file's row groups). Keys are the file's path below the source's
root and the row number, so two splits' ``data-00000.parquet`` never share a key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.import_shards import write_shard
from dedup.download.readers import Found, Part, Reader, SourceSample, in_shards, text_of
from dedup.download.readers.urllist import is_url_list
from dedup.download.sources import Source, key_of, relative, visible_files

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
CAPTION_COLUMNS = ("text", "caption", "TEXT")


def _parquet(found: Found) -> list[str]:
    if found.folder is not None:
        return [p for p in found.files if p.endswith(".parquet")]
    return list(found.paths) if all(p.endswith(".parquet") for p in found.paths) else []


class ParquetReader(Reader):
    kind = "parquet"
    looks_for = f".parquet files with an image column ({', '.join(IMAGE_COLUMNS)})"

    @staticmethod
    def evidence(found: Found) -> str | None:
        """Parquet files, in a folder with no image of its own (a Hugging Face repository's root,
        data/<split>/*.parquet, included), and not a URL list's (those are downloaded)."""
        from dedup.download.readers.folder import FolderReader

        files = _parquet(found)
        if not files or FolderReader.evidence(found) is not None:
            return None
        if any(p[: -len(".parquet")] + ".tar" in found.files for p in files):
            return None  # img2dataset's per-shard metadata beside its tars
        return None if is_url_list(found.fs, files[0]) else files[0]

    def files(self) -> list[str]:
        source = self.source
        if source.found:
            files = [p for p in visible_files(source) if p.endswith(".parquet")]
        else:
            files = list(source.paths)
        if not files:
            raise UserError(f"{source.url}: no .parquet files")
        return files

    def parts(self) -> list[Part]:
        """A part per file, its shards from the footer's row count; a file without an image column
        (or without the caption column asked for) is refused here, before any shard is written."""
        import pyarrow.parquet as pq

        parts = []
        for path in self.files():
            with self.source.fs.open(path, "rb") as handle:
                try:
                    pf = pq.ParquetFile(handle, pre_buffer=False)
                except Exception as err:
                    raise UserError(f"{path}: cannot read as parquet ({str(err).splitlines()[0]})") from None
                _columns(pf.schema_arrow, path, self.options.caption_col)
                rows = pf.metadata.num_rows
            parts.append(Part(path, math.ceil(rows / self.options.samples_per_shard), rows))
        return parts

    def write(self, work: WorkDir, part: Part, first: int) -> None:
        samples = file_samples(self.source, part.payload, self.options.caption_col)
        for shard, chunk in enumerate(in_shards(samples, self.options.samples_per_shard), start=first):
            write_shard(work, shard, chunk)


def _image_column(schema: Any, path: str) -> str:
    import pyarrow as pa

    for name in IMAGE_COLUMNS:
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


def _columns(schema: Any, path: str, caption_col: str | None) -> tuple[str, str | None]:
    """(image column, caption column or None)."""
    column = _image_column(schema, path)
    if caption_col is None:
        return column, next((c for c in CAPTION_COLUMNS if c in schema.names), None)
    if caption_col not in schema.names:
        raise UserError(f"{path}: no column '{caption_col}' (columns: {', '.join(schema.names[:12])})")
    return column, caption_col


def file_samples(source: Source, path: str, caption_col: str | None) -> Iterator[SourceSample]:
    """One parquet file's rows, streamed a batch at a time."""
    import pyarrow.parquet as pq

    rel = relative(path, source.root)
    with source.fs.open(path, "rb") as handle:
        pf = pq.ParquetFile(handle, pre_buffer=False)
        column, text = _columns(pf.schema_arrow, path, caption_col)
        row = 0
        for batch in pf.iter_batches(batch_size=64, columns=[column] + ([text] if text else [])):
            images = batch.column(column).to_pylist()
            captions = batch.column(text).to_pylist() if text else [None] * len(images)
            for value, caption in zip(images, captions, strict=True):
                yield _sample(value, text_of(caption), rel, row, path, column)
                row += 1


def _sample(value: Any, caption: str | None, rel: str, row: int, path: str, column: str) -> SourceSample:
    origin, key = f"{rel}:{row}", f"{key_of(rel)}/{row:09d}"
    data, inner = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if not isinstance(data, (bytes, bytearray, type(None))) or not isinstance(inner, (str, type(None))):
        raise UserError(
            f"{path}: row {row}: column '{column}' does not hold image bytes (bytes is "
            f"{type(data).__name__}, path is {type(inner).__name__})"
        )
    if data is None:
        return SourceSample(key, origin, None, "", error="no image bytes in this row")
    ext = inner.rsplit(".", 1)[-1].lower() if inner and "." in inner else ""
    return SourceSample(key, origin, bytes(data), ext or _sniff(bytes(data)), caption)


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
