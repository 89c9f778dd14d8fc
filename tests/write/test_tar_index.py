"""The write stage's own tar header reader against Python's tarfile, on every header format it meets.

Output shards are cut from input tars by byte span, so a span that starts or ends one block off copies
a broken member or drops one: each format's extension headers (GNU long names, pax records, ustar
prefixes, global headers, base-256 numbers) must land in the right sample's span.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dedup.write.tar_index import Span, index_tar

LONG = "deep/" + "d" * 120 + "/"  # a directory name too long for a ustar name field


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int, pax_headers: dict | None = None) -> Path:
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_headers or {}) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(data))
    return path


def _expected(path: Path, shard: int) -> list[Span]:
    """Spans by tarfile: a sample runs from its first member's first header to its last member's
    padded data end; consecutive members whose names share a key are one sample."""
    spans: list[Span] = []
    with tarfile.open(path) as t:
        for m in t.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
            end = m.offset_data + (m.size + 511) // 512 * 512
            if spans and spans[-1].key == key and spans[-1].end == m.offset:
                spans[-1] = Span(key, shard, spans[-1].start, end)
            else:
                spans.append(Span(key, shard, m.offset, end))
    return spans


def _samples(prefix: str = "") -> list[tuple[str, bytes]]:
    out = []
    for i, size in enumerate([0, 1, 511, 512, 513, 3000]):
        key = f"{prefix}{i:09d}"
        out += [
            (f"{key}.jpg", bytes([i + 1]) * size),
            (f"{key}.txt", b"caption %d" % i),
            (f"{key}.json", b"{}"),
        ]
    return out


@pytest.mark.parametrize(
    ("fmt", "prefix"),
    [
        (tarfile.USTAR_FORMAT, ""),
        (tarfile.USTAR_FORMAT, "a" * 90 + "/" + "b" * 60 + "/"),  # ustar's 155-byte prefix field
        (tarfile.GNU_FORMAT, ""),
        (tarfile.GNU_FORMAT, LONG),  # GNU ././@LongLink headers
        (tarfile.PAX_FORMAT, LONG),  # pax path records
        (tarfile.PAX_FORMAT, "caf\u00e9/"),  # pax for a non-ASCII name
    ],
)
def test_spans_match_tarfile_for_each_header_format(tmp_path, fmt, prefix):
    tar = _tar(tmp_path / "in.tar", _samples(prefix), fmt)
    got = index_tar(tar, 7)
    assert got == _expected(tar, 7)
    assert [s.key for s in got] == [f"{prefix}{i:09d}" for i in range(6)]
    data = tar.read_bytes()
    assert got[0].start == 0 and data[got[-1].end :].count(0) == len(data) - got[-1].end


def test_a_global_pax_header_is_not_part_of_the_first_sample(tmp_path):
    tar = _tar(tmp_path / "g.tar", _samples(), tarfile.PAX_FORMAT, pax_headers={"comment": "made by a test"})
    got = index_tar(tar, 0)
    assert got == _expected(tar, 0) and got[0].start == 1024  # after the global header and its record


def test_a_pax_size_record_overrides_the_header_size(tmp_path):
    """pax stores sizes that do not fit the octal field as a record; the header's field then says 0."""
    tar = tmp_path / "big.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for key, size in (("a", 700), ("b", 10)):
            info = tarfile.TarInfo(f"{key}.bin")
            info.size = size
            info.pax_headers = {"size": str(size)}
            t.addfile(info, io.BytesIO(b"x" * size))
    raw = bytearray(tar.read_bytes())
    first = index_tar(tar, 0)[0]
    # find the first member's ustar header (after its pax header and record) and zero its size field
    header = first.start + 1024
    raw[header + 124 : header + 136] = b"00000000000\0"
    raw[header + 148 : header + 156] = b" " * 8
    raw[header + 148 : header + 156] = b"%06o\0 " % (sum(raw[header : header + 512]))
    tar.write_bytes(bytes(raw))
    got = index_tar(tar, 0)
    assert [(s.key, s.size) for s in got] == [("a", 1024 + 512 + 1024), ("b", 1024 + 512 + 512)]


def test_a_base_256_size_field_is_read(tmp_path):
    """GNU tar writes sizes over 8 GB in base-256 (the field's top bit set); the same small size written
    that way must give the same span."""
    tar = _tar(tmp_path / "b.tar", _samples(), tarfile.GNU_FORMAT)
    before = index_tar(tar, 0)
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as t:
        member = next(m for m in t.getmembers() if m.size == 3000)
    h = member.offset
    raw[h + 124 : h + 136] = b"\x80" + (3000).to_bytes(11, "big")
    raw[h + 148 : h + 156] = b" " * 8
    raw[h + 148 : h + 156] = b"%06o\0 " % (sum(raw[h : h + 512]))
    tar.write_bytes(bytes(raw))
    assert index_tar(tar, 0) == before


def test_a_bad_header_checksum_is_refused_with_its_offset(tmp_path):
    tar = _tar(tmp_path / "c.tar", _samples(), tarfile.USTAR_FORMAT)
    raw = bytearray(tar.read_bytes())
    second = index_tar(tar, 0)[1].start
    raw[second + 10] ^= 0x20
    tar.write_bytes(bytes(raw))
    with pytest.raises(tarfile.ReadError, match=f"bad header checksum at byte {second}$"):
        index_tar(tar, 0)


def test_an_empty_file_has_no_samples(tmp_path):
    (tmp_path / "e.tar").write_bytes(b"")
    assert index_tar(tmp_path / "e.tar", 0) == []


def _rewrite_field(raw: bytearray, header: int, lo: int, hi: int, value: bytes) -> None:
    raw[header + lo : header + hi] = value.ljust(hi - lo, b"\0")
    raw[header + 148 : header + 156] = b" " * 8
    raw[header + 148 : header + 156] = b"%06o\0 " % (sum(raw[header : header + 512]))


def test_size_fields_without_zero_padding_or_empty_read_as_tar_does(tmp_path):
    """Some writers do not zero-pad numbers ('1750' for 1000) or leave a zero size empty; an
    unpadded number starting with an odd digit must not be taken for GNU base-256."""
    tar = _tar(
        tmp_path / "p.tar",
        [("a.bin", b"x" * 1000), ("b.txt", b""), ("c.bin", b"y" * 10)],
        tarfile.USTAR_FORMAT,
    )
    before = index_tar(tar, 0)
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as t:
        a, b = t.getmember("a.bin"), t.getmember("b.txt")
    _rewrite_field(raw, a.offset, 124, 136, b"%o" % 1000)  # b"1750"
    _rewrite_field(raw, b.offset, 124, 136, b"")  # no digits at all: size 0
    tar.write_bytes(bytes(raw))
    assert index_tar(tar, 0) == before
    with tarfile.open(tar) as t:
        assert [m.size for m in t.getmembers()] == [1000, 0, 10]


def test_a_tar_without_end_of_archive_blocks_is_indexed_to_its_last_member(tmp_path):
    """A tar cut right after its last member (no zero blocks; the last member empty, so its header
    is the file's final 512 bytes) still yields every sample."""
    tar = _tar(tmp_path / "n.tar", [("a.jpg", b"x" * 700), ("b.txt", b"")], tarfile.USTAR_FORMAT)
    spans = index_tar(tar, 0)
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: spans[-1].end])
    assert index_tar(cut, 0) == spans and spans[-1].end == spans[-1].start + 512


def test_a_pax_path_without_an_extension_keeps_its_whole_name(tmp_path):
    """pax records are "LEN key=value\\n"; a value read one byte too long would change a key whose
    name has no extension to cut it off."""
    name = LONG + "README"
    tar = _tar(tmp_path / "x.tar", [(name, b"r" * 30), (LONG + "z.txt", b"z")], tarfile.PAX_FORMAT)
    got = index_tar(tar, 0)
    assert got == _expected(tar, 0) and got[0].key == name


def test_a_name_filling_the_whole_name_field_and_a_pax_size_of_whole_blocks(tmp_path):
    """A 100-byte name has no NUL terminator (the next field must not leak into it); a pax size that
    is a whole number of blocks must not gain a block."""
    exact = "n" * 100  # no extension: the whole name is the key
    tar = _tar(tmp_path / "full.tar", [(exact, b"a" * 512), ("b.txt", b"b")], tarfile.USTAR_FORMAT)
    got = index_tar(tar, 0)
    assert got == _expected(tar, 0) and got[0].key == exact
    big = tmp_path / "pax.tar"
    with tarfile.open(big, "w", format=tarfile.PAX_FORMAT) as t:
        for key, size in (("a", 512 * 513), ("b", 5)):  # 513 blocks: a block-count off by one shows
            info = tarfile.TarInfo(f"{key}.bin")
            info.size = size
            info.pax_headers = {"size": str(size)}
            t.addfile(info, io.BytesIO(b"x" * size))
    raw = bytearray(big.read_bytes())
    header = index_tar(big, 0)[0].start + 1024
    _rewrite_field(raw, header, 124, 136, b"")  # the size lives only in the pax record
    big.write_bytes(bytes(raw))
    assert [(s.key, s.size) for s in index_tar(big, 0)] == [
        ("a", 1024 + 512 + 512 * 513),
        ("b", 1024 + 512 + 512),
    ]
