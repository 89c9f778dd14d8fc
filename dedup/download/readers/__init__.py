"""One reader per kind of source an import reads, each in its own module of this package (shards,
folder, parquet, and the URL list, which is recognised and sent to ``dedup download``).

A reader says from what it finds whether a source is of its kind (``evidence``), which files it
reads (the listing that later tells whether the source changed), how its import splits into units
(``parts``: a tar, a parquet file, a slice of a folder, each writing a number of shards known before
any is written, so units can run on any worker and a killed import resumes from finished ones), and
writes one part. A new kind is one new module here: :func:`readers` finds every :class:`Reader`
subclass in the package. A source that two readers claim is refused with the kinds that matched;
one that no reader claims is refused with what each looks for. Nothing is guessed.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from dedup.core.errors import UserError

if TYPE_CHECKING:
    from dedup.core.layout import WorkDir
    from dedup.download.sources import Source


@dataclass
class SourceSample:
    key: str
    origin: str  # relative path or parquet file:row, recorded as the sample's url
    image: bytes | None
    ext: str
    caption: str | None = None
    error: str | None = None
    members: dict[str, bytes] | None = None  # a rekeyed shard's sample: every member, byte for byte


@dataclass(frozen=True)
class ImportOptions:
    """The import's settings (``source_options`` in a config, options of ``dedup import``)."""

    samples_per_shard: int = 10_000
    caption_col: str | None = None
    rekey: bool = False


@dataclass(frozen=True)
class Part:
    """One unit of an import: what one worker reads (``payload``: picklable, paths only) and how many
    shards it writes; ``size`` (samples, where known) drives the progress bar."""

    payload: Any
    shards: int = 1
    size: int = 0


@dataclass(frozen=True)
class Found:
    """What detection looks at: the paths the source names and, for one named folder, its visible
    files (sorted, hidden ones left out) and those directly in it."""

    fs: Any
    paths: tuple[str, ...]
    folder: str | None
    files: tuple[str, ...]

    @property
    def top(self) -> list[str]:
        """Files directly in the named folder."""
        if self.folder is None:
            return []
        cut = len(self.folder.rstrip("/")) + 1
        return [p for p in self.files if "/" not in p[cut:]]


class Reader(ABC):
    """A kind of source. ``evidence`` runs on what was found, before anything is read or written;
    the rest runs on an opened source (``files`` and ``parts`` on the driver, ``write`` per unit,
    wherever the executor runs it: the source must be reachable from there, as embed's in-place
    shards already require)."""

    kind: ClassVar[str] = ""
    looks_for: ClassVar[str] = ""  # for the message when no reader claims a source
    importable: ClassVar[bool] = True  # False: recognised, to be refused with where it belongs
    in_place: bool = False  # samples read from the source at every later stage (no copy)

    def __init__(self, source: Source, options: ImportOptions) -> None:
        self.source, self.options = source, options

    @staticmethod
    @abstractmethod
    def evidence(found: Found) -> str | None:
        """A file that makes the source look like this kind (named in messages); None if none."""

    @abstractmethod
    def files(self) -> list[str]:
        """Every file the import reads (the source listing is made of these)."""

    @abstractmethod
    def parts(self) -> list[Part]:
        """The import's units, in order; refusals that need only names (or file footers) come here,
        before any shard is written."""

    @abstractmethod
    def write(self, work: WorkDir, part: Part, first: int) -> None:
        """Write ``part``'s shards, numbered from ``first`` (each ends with its ``_stats.json``)."""

    def check(self, work: WorkDir, parts: list[Part]) -> None:
        """What can be checked only across every part's shards (keys unique across tars); most
        kinds have nothing to check there."""
        return None


@cache
def readers() -> dict[str, type[Reader]]:
    """Every reader of this package by kind: the modules found here, no list to keep in step."""
    found: dict[str, type[Reader]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Reader) and value.kind:
                found[value.kind] = value
    return dict(sorted(found.items()))


def importable_kinds() -> tuple[str, ...]:
    """The kinds an import writes a work directory from (the URL list is downloaded instead)."""
    return tuple(k for k, r in readers().items() if r.importable)


def detect_kind(found: Found, text: str) -> str:
    """The one kind whose reader claims the source; refused when none or several do."""
    claims = {kind: r.evidence(found) for kind, r in readers().items()}
    matched = {kind: ev for kind, ev in claims.items() if ev is not None}
    if len(matched) > 1:
        which = "; ".join(f"{kind} ({ev.rsplit('/', 1)[-1]})" for kind, ev in matched.items())
        raise UserError(
            f"{text}: could be more than one kind of source: {which}; keep one kind in a folder "
            "(move the others out) and import each separately"
        )
    if not matched:
        wanted = "; ".join(f"{kind}: {r.looks_for}" for kind, r in readers().items())
        raise UserError(f"{text}: no images found, and no other kind of source either (looked for {wanted})")
    return next(iter(matched))


def reader_for(source: Source, options: ImportOptions) -> Reader:
    return readers()[source.kind](source, options)


def in_shards(samples: Iterable[SourceSample], per_shard: int) -> Iterator[Iterator[SourceSample]]:
    """``samples`` cut into consecutive runs of ``per_shard`` (each consumed before the next)."""
    it = iter(samples)
    while True:
        chunk = itertools.islice(it, per_shard)
        first = next(chunk, None)
        if first is None:
            return
        yield itertools.chain([first], chunk)


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def parquet_columns(fs: Any, path: str) -> list[str]:
    """A parquet file's column names, from its footer alone."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        try:
            return list(pq.ParquetFile(handle, pre_buffer=False).schema_arrow.names)
        except Exception as err:
            raise UserError(f"{path}: cannot read as parquet ({str(err).splitlines()[0]})") from None
