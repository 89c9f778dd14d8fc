"""Where each sample sits in a tar (a Span: its members' header and data blocks), read from the
headers alone: a minimal reader of ustar, GNU and pax headers, with the header checksum checked,
several times faster than ``tarfile``. The write stage copies these byte ranges as they are."""

from __future__ import annotations

import mmap
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A sample's bytes in an input tar: its members' header and data blocks, [start, end)."""

    key: str
    shard: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for members over 8 GB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def index_tar(path: Path, shard: int) -> list[Span]:
    """Spans of the samples of one tar, in tar order, from its headers (member data is skipped).

    A minimal reader of ustar/GNU/pax headers: only what a span needs (name, size, where the member's
    first header starts), with the header checksum checked, several times faster than ``tarfile``.
    """
    spans: list[Span] = []
    exts: set[str] = set()
    size_on_disk = path.stat().st_size
    if size_on_disk == 0:
        return spans
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos, first_header, long_name, pax = 0, None, None, {}
        while pos + 512 <= size_on_disk:
            header = mm[pos : pos + 512]
            if header.count(0) == 512:
                break
            stored = _number(header[148:156])
            if stored != sum(header[:148]) + 256 + sum(header[156:]):
                raise tarfile.ReadError(f"{path}: bad header checksum at byte {pos}")
            size = _number(header[124:136])
            kind = header[156:157]
            data_end = pos + 512 + ((size + 511) // 512) * 512
            if first_header is None:
                first_header = pos
            if kind in (b"L", b"x", b"g", b"K"):
                data = mm[pos + 512 : pos + 512 + size]
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                elif kind == b"x":
                    pax = _pax_records(data)
                if kind == b"g":
                    first_header = None
                pos = data_end
                continue
            if "size" in pax:
                size = int(pax["size"])
                data_end = pos + 512 + ((size + 511) // 512) * 512
            if long_name is not None:
                name = long_name
            elif "path" in pax:
                name = pax["path"]
            else:
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                raw = header[:100].split(b"\0", 1)[0]
                name = ((prefix + b"/" + raw) if prefix else raw).decode("utf-8", "replace")
            if kind in (b"0", b"\0", b"7"):
                base = name.rsplit("/", 1)[-1]
                key = name[: len(name) - len(base)] + base.split(".", 1)[0]
                ext = base.partition(".")[2]
                if spans and spans[-1].key == key and spans[-1].end == first_header and ext not in exts:
                    spans[-1] = Span(key, shard, spans[-1].start, data_end)
                else:  # a member name seen again under one key starts another sample, as iter_samples
                    spans.append(Span(key, shard, first_header, data_end))
                    exts = set()
                exts.add(ext)
            pos, first_header, long_name, pax = data_end, None, None, {}
    return spans
