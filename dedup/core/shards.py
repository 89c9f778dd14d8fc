"""Reading WebDataset tar shards as samples: every member, byte for byte, in tar order.

A sample is the run of consecutive members sharing a key (the name up to the first dot), as
webdataset defines it. We read with the standard library so that what we copy is exactly what is in
the tar, and so that nothing (a decoder, a default handler) sits between the bytes and the caller.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
# Largest image (width x height) any stage decodes: Pillow's own bomb limit. A 445 KB PNG can say
# 12,000 x 12,000 in its header and take 4 GB to decode, so the header is read first, everywhere.
MAX_IMAGE_AREA = 89_478_485


@dataclass
class Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes, in tar order
    start: int = 0  # byte offset of the first member's header in the tar
    end: int = 0  # byte offset just past the last member's data blocks

    @property
    def image_ext(self) -> str | None:
        return next((e for e in self.members if e.lower() in IMAGE_EXTENSIONS), None)

    @property
    def image(self) -> bytes | None:
        ext = self.image_ext
        return self.members[ext] if ext else None

    @property
    def caption(self) -> str | None:
        data = self.members.get("txt")
        return data.decode("utf-8", errors="replace") if data is not None else None


def _split(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    key, _, ext = base.partition(".")
    return prefix + key, ext


def iter_samples(path: Path | BinaryIO) -> Iterator[Sample]:
    """Yield the samples of one tar (a path or an open binary file) in order; raises
    ``tarfile.TarError`` on a corrupt archive."""
    current: Sample | None = None
    named = isinstance(path, (str, os.PathLike))
    with tarfile.open(path, mode="r|*") if named else tarfile.open(fileobj=path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split(member.name)
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            # A member name seen twice under one key is a second sample with the same key (which verify
            # must see as a duplicate), not an overwrite.
            if current is None or key != current.key or ext in current.members:
                if current is not None:
                    yield current
                current = Sample(key, start=member.offset)
            current.members[ext] = data
            current.end = member.offset_data + ((member.size + 511) // 512) * 512
    if current is not None:
        yield current


def first_occurrences(samples: Iterable[Sample]) -> Iterator[Sample]:
    """The samples of one tar whose key was not seen earlier in it. A key a tar repeats is one
    sample (the first); import gives each later occurrence its own ledger row, so no stage may
    give that key a second outcome."""
    seen: set[str] = set()
    for sample in samples:
        if sample.key not in seen:
            seen.add(sample.key)
            yield sample


def input_samples(path: Path) -> Iterator[Sample]:
    """The samples of an input tar as every stage reads them: first occurrences only."""
    return first_occurrences(iter_samples(path))


def read_sample(path: Path, start: int, end: int) -> Sample | None:
    """The one sample whose members span bytes [start, end) of a tar (the offsets embed recorded), read
    without scanning the tar; None when the span holds no sample (the tar changed since)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return next(iter_samples(io.BytesIO(data + bytes(1024))), None)  # two zero blocks end it
    except tarfile.TarError:
        return None


def count_samples(path: Path) -> int:
    return sum(1 for _ in iter_samples(path))
