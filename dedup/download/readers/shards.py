"""WebDataset shards: ``.tar`` files (a folder of them, a glob, or a brace pattern), a unit per tar.

On a local or mounted filesystem a tar is read *in place*: the work directory holds a reference
(``download/NNNNN.tar.ref``: path, size, mtime) and every stage reads the original tar, so no image
byte is copied; later stages refuse a referenced tar whose size or mtime changed. On an object store
a tar is streamed into the work directory once, byte for byte (write and the copy verifier read
many small byte ranges). Keys are the shards' own and must be unique across them: shards whose keys
repeat are refused, or with ``rekey`` copied in under ``<tar name>/<key>``. A key repeated inside
one tar keeps its first sample; each later one gets a row of its own (``<key>~2``, ...), so no key
has two outcomes.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError
from dedup.core.files import atomic_path, write_json
from dedup.core.layout import WorkDir
from dedup.core.shards import IMAGE_EXTENSIONS, iter_samples
from dedup.download.import_shards import TOO_LARGE, finish_shard, row, write_shard
from dedup.download.readers import Found, Part, Reader, SourceSample, text_of
from dedup.download.sources import Source, key_of, relative, visible_files

# Tars that are not read in place: a source that holds one is refused (decompress it first), never
# skipped, because its samples would otherwise vanish without a ledger row.
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
# A repeated key's later sample: a row of its own (this suffix and the occurrence), never a second
# outcome for the key.
REPEAT_MARK = "~"


def _is_tar(path: str) -> bool:
    return path.lower().endswith((".tar", *COMPRESSED_TARS))


def _compressed(path: str) -> str:
    return (
        f"{path}: a compressed tar; shards are read in place, uncompressed: decompress it "
        "(gunzip / xz -d / zstd -d) and import again"
    )


class ShardsReader(Reader):
    kind = "shards"
    looks_for = ".tar files (a folder of them, a glob or {00000..00009}.tar)"

    def __init__(self, source: Source, options: Any) -> None:
        super().__init__(source, options)
        self.in_place = source.local and not options.rekey

    @staticmethod
    def evidence(found: Found) -> str | None:
        if found.folder is not None:
            return next((p for p in found.top if _is_tar(p)), None)
        return found.paths[0] if all(_is_tar(p) for p in found.paths) else None

    def tars(self) -> list[str]:
        """The tars in order: a folder's sorted, a pattern's in the order it names them. What else a
        folder holds that could hold samples is refused (tars in subfolders, images)."""
        source = self.source
        paths = list(source.paths) if not source.found else []
        if source.found:
            root = source.paths[0]
            for p in visible_files(source):
                rel = relative(p, root)
                if "/" not in rel and _is_tar(rel):
                    paths.append(p)
                elif _is_tar(rel) or rel.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                    raise UserError(
                        f"{p}: beside the shards of {root} but not one of them (only the folder's own "
                        ".tar files are read); move it out or import it separately"
                    )
        for p in paths:
            if p.lower().endswith(COMPRESSED_TARS):
                raise UserError(_compressed(p))
        return paths

    def files(self) -> list[str]:
        tars = self.tars()
        beside = [t[: -len(".tar")] + ".parquet" for t in tars]
        return tars + [b for b in beside if self.source.fs.isfile(b)]

    def parts(self) -> list[Part]:
        return [Part(path) for path in self.tars()]

    def write(self, work: WorkDir, part: Part, first: int) -> None:
        if self.options.rekey:
            write_shard(work, first, rekeyed_samples(self.source, part.payload))
        else:
            import_shard(self.source, part.payload, work, first)

    def check(self, work: WorkDir, parts: list[Part]) -> None:
        """Keys are the ledger's identity: a key two tars share would get two outcomes. Refused with
        both places named (``--rekey`` imports such shards under keys prefixed with the tar's name)."""
        if self.options.rekey:
            return
        seen: dict[str, str] = {}
        for shard, part in enumerate(parts):
            keys = pl.read_parquet(work.download_parquet(shard), columns=["key"])["key"].to_list()
            for key in keys:
                if key in seen and seen[key] != part.payload:
                    raise UserError(
                        f"{part.payload}: key '{key}' is also in {seen[key]}; keys must be unique across "
                        "shards (shards made separately often all start at 000000): import with --rekey "
                        "to key each sample as <tar name>/<key>"
                    )
                seen[key] = part.payload


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


def repeat_key(key: str, occurrence: int) -> str:
    return f"{key}{REPEAT_MARK}{occurrence}"


def repeat_error(key: str, tar_path: str, sample: Any) -> str:
    return (
        f"repeated key: another sample named {key} in {tar_path} (bytes {sample.start}-{sample.end}); "
        "only the first is imported"
    )


def rekeyed_samples(source: Source, tar_path: str) -> Iterator[SourceSample]:
    """A tar's samples under keys prefixed with its name (``00000/000123``), every member kept."""
    name = tar_path.rsplit("/", 1)[-1]
    prefix = key_of(name) + "/"
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
        error = text_of(r.get("error_message")) or str(r["status"])
        out.append(row(str(r["key"]), text_of(r.get("url")) or "", text_of(r.get("caption")), None, error))
    return out


def _reference(source: Source, tar_path: str, work: WorkDir, shard: int) -> None:
    """A local tar is referenced (path, size, mtime); one on an object store is copied, byte for byte."""
    if source.local:
        local = Path(tar_path).resolve()
        stat = local.stat()
        write_json(
            work.download_ref(shard), {"path": str(local), "size": stat.st_size, "mtime": stat.st_mtime}
        )
        return
    with (
        atomic_path(work.download_tar(shard)) as tmp,
        source.fs.open(tar_path, "rb") as src,
        open(tmp, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 20)


def import_shard(source: Source, tar_path: str, work: WorkDir, shard: int) -> dict[str, Any]:
    """Reference or stream in one tar, then describe every sample of it: one row per sample, a
    repeated key's later samples included (each under its own key)."""
    _reference(source, tar_path, work, shard)
    rows: list[dict[str, Any]] = []
    name = tar_path.rsplit("/", 1)[-1]
    counts: dict[str, int] = {}
    try:
        for sample in iter_samples(work.input_tar(shard)):
            n = counts[sample.key] = counts.get(sample.key, 0) + 1
            url = sample_url(sample, f"{name}#{sample.key}")
            if n > 1:
                error = repeat_error(sample.key, tar_path, sample)
                rows.append(row(repeat_key(sample.key, n), url, None, None, error))
                continue
            error = None if sample.image is not None else "no image member"
            rows.append(row(sample.key, url, sample.caption, sample.image, error))
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
    rows += _failed_rows_beside(source.fs, tar_path, {r["key"] for r in rows})
    return finish_shard(work, shard, rows, source=f"{source.url if not source.local else tar_path}")
