"""A URL list (LAION-style metadata: parquet, csv, tsv or jsonl with a URL column): recognised so that
an import of one is refused with where it belongs, ``dedup download`` (img2dataset fetches the
images; ``dedup/download/urllist.py`` reads the list), instead of being read as something else.
"""

from __future__ import annotations

import json
from typing import Any

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.readers import Found, Part, Reader, parquet_columns

URL_COLUMNS = ("url", "URL")
TEXT_FORMATS = (".csv", ".tsv", ".jsonl")


def _header(fs: Any, path: str) -> list[str]:
    """Column names of a csv/tsv (first line) or jsonl (first record) file."""
    with fs.open(path, "rb") as handle:
        first = handle.readline(1 << 16).decode("utf-8", errors="replace").strip()
    if path.endswith(".jsonl"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return []
        return list(record) if isinstance(record, dict) else []
    return [c.strip().strip('"') for c in first.split("\t" if path.endswith(".tsv") else ",")]


def is_url_list(fs: Any, path: str) -> bool:
    """A table with a URL column and no image bytes."""
    from dedup.download.readers.parquet import IMAGE_COLUMNS

    columns = parquet_columns(fs, path) if path.endswith(".parquet") else _header(fs, path)
    return any(c in columns for c in URL_COLUMNS) and not any(c in columns for c in IMAGE_COLUMNS)


class UrlListReader(Reader):
    kind = "url list"
    looks_for = "a table of image URLs (parquet, csv, tsv or jsonl with a url column), for dedup download"
    importable = False

    @staticmethod
    def evidence(found: Found) -> str | None:
        """Named table files, or a folder holding nothing else (but hidden files), whose first table
        has a URL column and no image column."""
        files = list(found.paths) if found.folder is None else list(found.files)
        if not files or not all(p.endswith((".parquet", *TEXT_FORMATS)) for p in files):
            return None
        return files[0] if is_url_list(found.fs, files[0]) else None

    def _refuse(self) -> UserError:
        return UserError(
            f"{self.source.url}: a URL list, not images: download it with "
            "`dedup download URL_LIST WORKDIR` (img2dataset fetches the images)"
        )

    def files(self) -> list[str]:
        raise self._refuse()

    def parts(self) -> list[Part]:
        raise self._refuse()

    def write(self, work: WorkDir, part: Part, first: int) -> None:
        raise self._refuse()
