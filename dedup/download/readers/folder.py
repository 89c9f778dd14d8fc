"""A folder of images (recursively), a unit per ``samples_per_shard`` files: each becomes a sample
with its original bytes (never re-encoded), plus ``.txt`` (caption, from a ``.txt`` or ``.json``
sidecar) and ``.json`` (its origin). Keys are the relative path without its extension (``a/b/c.jpg``
-> ``a/b/c``; dots become ``_`` since WebDataset splits a member name at the first dot), so a removal
in the ledger names the file. A file that is not an image, or whose name is not UTF-8, gets a ledger
row saying so; the listing fixes each file's unit before any is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.core.shards import IMAGE_EXTENSIONS
from dedup.download.import_shards import write_shard
from dedup.download.readers import Found, Part, Reader, SourceSample
from dedup.download.sources import Source, key_of, readable_name, relative, visible_files

SIDECARS = ("txt", "json")


def _ext(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""


class FolderReader(Reader):
    kind = "folder"
    looks_for = f"a folder holding images ({', '.join(IMAGE_EXTENSIONS)}, recursively)"

    @staticmethod
    def evidence(found: Found) -> str | None:
        if found.folder is None:
            return None
        return next((p for p in found.files if _ext(p) in IMAGE_EXTENSIONS), None)

    def files(self) -> list[str]:
        return visible_files(self.source)

    def entries(self) -> list[str]:
        """The files that become samples, in order: every visible file but an image's caption
        sidecar; two files that would share a key are refused here, before anything is written."""
        source = self.source
        files = self.files()
        images = {p.rsplit(".", 1)[0] for p in files if _ext(p) in IMAGE_EXTENSIONS}
        seen: dict[str, str] = {}
        out = []
        for p in files:
            ext = _ext(p)
            if ext not in IMAGE_EXTENSIONS and ext in SIDECARS and p.rsplit(".", 1)[0] in images:
                continue  # a caption, read with its image
            printable = readable_name(relative(p, source.paths[0]))
            key = _key(printable, ext)
            if key in seen:
                raise UserError(
                    f"{source.url}: {seen[key]} and {printable} map to the same key '{key}'; rename one"
                )
            seen[key] = printable
            out.append(p)
        return out

    def parts(self) -> list[Part]:
        entries = self.entries()
        n = self.options.samples_per_shard
        slices = [tuple(entries[i : i + n]) for i in range(0, len(entries), n)]
        return [Part(paths, 1, len(paths)) for paths in slices]

    def write(self, work: WorkDir, part: Part, first: int) -> None:
        write_shard(work, first, folder_samples(self.source, part.payload))


def _key(printable: str, ext: str) -> str:
    return key_of(printable) if ext in IMAGE_EXTENSIONS else printable.replace(".", "_")


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


def folder_samples(source: Source, paths: tuple[str, ...]) -> Iterator[SourceSample]:
    """One sample per file, read as the shard is written (a shard is never held in memory twice)."""
    fs, root = source.fs, source.paths[0]
    for p in paths:
        rel = relative(p, root)
        ext = _ext(p)
        printable = readable_name(rel)
        key = _key(printable, ext)
        if printable != rel:  # a key, a url and a tar member must be text: the file is named, not read
            error = "file name is not UTF-8; rename it to import it"
            yield SourceSample(key, printable, None, "", error=error)
            continue
        if ext not in IMAGE_EXTENSIONS:
            yield SourceSample(key, rel, None, "", error=f"not an image file ({ext or 'no extension'})")
            continue
        try:
            data = Path(p).read_bytes() if source.local else fs.cat_file(p)  # fsspec costs 2x locally
            yield SourceSample(key, rel, data, ext, _sidecar_caption(fs, p))
        except OSError as err:
            yield SourceSample(key, rel, None, "", error=f"unreadable: {err.strerror or err}")
