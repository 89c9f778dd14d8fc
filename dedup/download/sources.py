"""What an import reads: a source named by a path, pattern or fsspec URL, its kind, the files it
holds, and a listing of them (names, sizes, mtimes) that says later whether the source changed.

What kind a source is, and how each kind is read, is its reader's (``dedup/download/readers/``).
Every file an import could read is either read (and each of its samples gets a ledger row) or named
in a refusal. Hidden files and folders (``.git``, ``.DS_Store``) are the one exception, counted in
the summary, because every tool that walks a folder skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError

_GLOB_CHARS = "*?["
LISTING_SCHEMA = {"path": pl.String, "size": pl.Int64, "mtime": pl.Float64}


@dataclass(frozen=True)
class Source:
    """Where the data is: a filesystem and the paths on it the source names (one or many)."""

    url: str
    fs: Any
    paths: tuple[str, ...]
    kind: str
    # every file below a folder source with its info, found once when the source is opened (a walk
    # of 100,000 files takes seconds; kind, readers, listing and counts all use this one)
    found: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    @property
    def root(self) -> str:
        """The folder keys and listings are relative to: the named folder, or the deepest folder
        holding every named file (so two splits' ``data-0.parquet`` keep their split in the key)."""
        if len(self.paths) == 1 and self.fs.isdir(self.paths[0]):
            return self.paths[0].rstrip("/")
        parents = [p.rsplit("/", 1)[0] if "/" in p else "" for p in self.paths]
        common = parents[0].split("/")
        for parent in parents[1:]:
            parts = parent.split("/")
            n = 0
            while n < min(len(common), len(parts)) and common[n] == parts[n]:
                n += 1
            common = common[:n]
        return "/".join(common)


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
    from dedup.download.readers import Found, detect_kind

    folder = paths[0] if len(paths) == 1 and fs.isdir(paths[0]) else None
    found = _find(fs, folder) if folder is not None else {}
    visible = tuple(_visible(found, folder)) if folder is not None else ()
    kind = detect_kind(Found(fs, tuple(paths), folder, visible), text)
    return Source(text, fs, tuple(paths), kind, found)


def _find(fs: Any, root: str) -> dict[str, Any]:
    """Every file below ``root``, sorted, with only what a listing needs (size, mtime): a 100,000-file
    folder's full fsspec infos would hold ~100 MB."""
    found = fs.find(root, detail=True)
    return {p: {"size": found[p].get("size"), "mtime": _mtime(found[p])} for p in sorted(found)}


def relative(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1 :] if root else path


def readable_name(rel: str) -> str:
    """A path as UTF-8 text: undecodable bytes (surrogate-escaped by the OS layer) shown as U+FFFD."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _visible(found: dict[str, Any], root: str) -> Iterator[str]:
    for p in found:
        if not hidden(relative(p, root)):
            yield p


def visible_files(src: Source) -> list[str]:
    """Every file below a folder source that is not hidden, sorted."""
    return list(_visible(src.found, src.paths[0]))


def hidden_count(src: Source) -> int:
    """Hidden files below a folder source: not imported, counted in the summary."""
    if not src.found:
        return 0
    return sum(1 for p in src.found if hidden(relative(p, src.paths[0])))


def key_of(relative_path: str) -> str:
    """WebDataset key of a relative path: extension dropped, dots inside names made underscores."""
    stem = relative_path.rsplit(".", 1)[0] if "." in relative_path.rsplit("/", 1)[-1] else relative_path
    return stem.replace(".", "_")


def _mtime(info: dict[str, Any]) -> float:
    for name in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if value is not None and hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, str):
            from datetime import datetime

            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def listing(src: Source, fresh: bool = False) -> pl.DataFrame:
    """Name (relative to the source's root), size and mtime of every file the import reads;
    ``fresh``: walked again now (did the source change meanwhile?), not as it was opened."""
    root = src.root
    if src.kind == "folder":  # one walk with sizes and mtimes, not a stat per file
        found = _find(src.fs, src.paths[0]) if fresh else src.found
        items = [(p, found[p]) for p in _visible(found, src.paths[0])]
    else:
        from dedup.download.readers import ImportOptions, reader_for

        items = [(p, src.fs.info(p)) for p in reader_for(src, ImportOptions()).files()]
    rows = []
    for p, info in items:
        rows.append(
            {
                "path": readable_name(relative(p, root)),
                "size": int(info.get("size") or 0),
                "mtime": _mtime(info),
            }
        )
    return pl.DataFrame(rows, schema=LISTING_SCHEMA)


def changes(before: pl.DataFrame, now: pl.DataFrame) -> dict[str, list[str]]:
    """Files added, deleted and replaced (size or mtime differ) between two listings."""
    old = {r[0]: (r[1], r[2]) for r in before.iter_rows()}
    new = {r[0]: (r[1], r[2]) for r in now.iter_rows()}
    return {
        "added": sorted(set(new) - set(old)),
        "deleted": sorted(set(old) - set(new)),
        "replaced": sorted(p for p in set(old) & set(new) if old[p] != new[p]),
    }


def describe_changes(diff: dict[str, list[str]]) -> str:
    parts = []
    for what, names in diff.items():
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {what} ({shown})")
    return "; ".join(parts)


def source_identity(src: Source) -> str:
    """How a source is named in the summary: an absolute path locally, the URL as given otherwise."""
    if src.local and "{" not in src.url and not any(c in src.url for c in _GLOB_CHARS):
        return str(Path(src.paths[0]).resolve())
    return src.url
