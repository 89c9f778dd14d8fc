"""The parquet reader on the column layouts parquet files hold in the wild: a binary or large-binary
column, a Hugging Face image struct with or without its path, captions by name, and what is refused."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import encode, photo

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import
from dedup.download.readers.parquet import _sniff

JPEG = encode(photo(1, (64, 48)))


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def _members(work: WorkDir) -> dict[str, bytes]:
    with tarfile.open(work.download_tar(0)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_a_plain_binary_image_column_is_read_with_its_bytes_unchanged(tmp_path, kind):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"jpg": pa.array([JPEG, None], type=kind), "text": ["a", "b"]}), path)
    work = WorkDir(tmp_path / "w")
    summary = run_import(path, work)
    assert (summary["input_rows"], summary["downloaded"]) == (2, 1)
    members = _members(work)
    assert members["t/000000000.jpg"] == JPEG and members["t/000000000.txt"] == b"a"
    import polars as pl

    empty = pl.read_parquet(work.download_parquet(0)).row(1, named=True)
    assert (empty["status"], empty["error_message"]) == ("failed_to_download", "no image bytes in this row")


def test_a_binary_caption_column_is_decoded_and_a_damaged_single_file_refused(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"image": [JPEG], "text": pa.array([b"caf\xc3\xa9 \xff"], type=pa.binary())}), path
    )
    work = WorkDir(tmp_path / "w")
    run_import(path, work)
    assert _members(work)["t/000000000.txt"] == "café \ufffd".encode()
    stats = json.loads(work.download_stats(0).read_text())
    assert stats["status_dict"] == {"success": 1} and stats["failed_to_download"] == 0  # no "failed": 0
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 damaged" * 8)
    with pytest.raises(UserError, match=r"bad.parquet: cannot read as parquet \("):
        run_import(bad, WorkDir(tmp_path / "w2"))


def test_a_struct_without_a_path_gets_its_extension_from_the_bytes(tmp_path):
    png = _png()
    images = [
        {"bytes": png, "path": None},
        {"bytes": png, "path": "dir/pic.v2.PNG"},
        {"bytes": JPEG, "path": "noext"},
    ]
    struct = pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array(images, type=struct)}), path)
    work = WorkDir(tmp_path / "w")
    run_import(path, work)
    names = sorted(n for n in _members(work) if not n.endswith(".json"))
    assert names == ["t/000000000.png", "t/000000001.png", "t/000000002.jpg"]


def test_a_caption_column_named_is_used_and_a_missing_one_refused(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [JPEG], "alt": ["named"], "caption": ["default"]}), path)
    work = WorkDir(tmp_path / "w")
    run_import(path, work, caption_col="alt")
    assert _members(work)["t/000000000.txt"] == b"named"
    work2 = WorkDir(tmp_path / "w2")
    run_import(path, work2)  # none named: text, caption or TEXT, whichever the file has
    assert _members(work2)["t/000000000.txt"] == b"default"
    with pytest.raises(UserError, match=r"t.parquet: no column 'title' \(columns: image, alt, caption\)"):
        run_import(path, WorkDir(tmp_path / "w3"), caption_col="title")


def test_what_is_not_image_bytes_is_refused_naming_file_row_and_column(tmp_path):
    bad_struct = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"image": pa.array([{"bytes": "x", "path": "a.jpg"}], type=bad_struct)}), path)
    with pytest.raises(UserError, match="column 'image' is a struct without binary 'bytes'"):
        run_import(path, WorkDir(tmp_path / "w"))
    # a path field that is not text: the row is named
    odd = pa.struct([("bytes", pa.binary()), ("path", pa.int64())])
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"image": pa.array([{"bytes": JPEG, "path": 7}], type=odd)}), path)
    with pytest.raises(UserError, match=r"p.parquet: row 0: column 'image' does not hold image bytes"):
        run_import(path, WorkDir(tmp_path / "w2"))


def test_a_damaged_second_file_is_refused_before_any_shard_is_written(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    pq.write_table(pa.table({"image": [JPEG]}), src / "a.parquet")
    (src / "b.parquet").write_bytes(b"PAR1 but not really a parquet file" * 4)
    work = WorkDir(tmp_path / "w")
    with pytest.raises(UserError, match=r"b.parquet: cannot read as parquet \("):
        run_import(src, work)
    assert not work.download_summary.exists() and not list(work.root.glob("download/*.tar"))


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
        (b"RIFF\0\0\0\0WAVEfmt ", "jpg"),  # RIFF alone is not WebP
        (b"GIF87a", "gif"),
        (b"GIF89a", "gif"),
        (b"BM\0\0", "bmp"),
        (b"\0\0\0\0", "jpg"),  # unknown: embed decodes by content, the name only labels the member
    ],
)
def test_the_extension_is_sniffed_from_the_first_bytes(head, ext):
    assert _sniff(head + b"\0" * 16) == ext
