"""The shards reader on what shards hold in the wild: img2dataset's parquet beside each tar (its failed
rows), a url in each sample's json, keys repeated inside a tar under --rekey, damaged files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import polars as pl
import pytest
from conftest import encode, photo, write_tar

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import


def _rows(work: WorkDir) -> dict[str, dict]:
    return {r["key"]: r for r in pl.read_parquet(work.download_parquet(0)).to_dicts()}


@pytest.fixture
def img2dataset_shard(tmp_path) -> Path:
    """One tar as img2dataset writes it: a json per sample with its url, and a parquet beside it that
    also lists the rows that failed to download (they never reached the tar)."""
    src = tmp_path / "s"
    src.mkdir()
    write_tar(
        src / "00000.tar",
        [
            ("000000000.jpg", encode(photo(1, (64, 48)))),
            ("000000000.json", json.dumps({"url": "http://x/a.jpg", "key": "000000000"}).encode()),
            ("000000001.jpg", encode(photo(2, (64, 48)))),
            ("000000001.json", b"{not json"),
            ("000000002.jpg", encode(photo(3, (64, 48)))),
            ("000000002.json", json.dumps({"url": 5}).encode()),
        ],
    )
    pl.DataFrame(
        {
            "key": ["000000000", "000000001", "000000002", "000000003", "000000004"],
            "url": ["http://x/a.jpg", "http://x/b.jpg", "http://x/c.jpg", "http://x/d.jpg", None],
            "caption": [None, None, None, "lost one", None],
            "status": ["success", "success", "success", "failed_to_download", "failed_to_resize"],
            "error_message": [None, None, None, "HTTP 404", None],
        }
    ).write_parquet(src / "00000.parquet")
    return src


def test_img2dataset_failed_rows_beside_a_tar_get_their_own_ledger_rows(img2dataset_shard, tmp_path):
    work = WorkDir(tmp_path / "w")
    summary = run_import(img2dataset_shard, work)
    assert summary["in_place"] is True and summary["rekeyed"] is False
    rows = _rows(work)
    assert sorted(rows) == [f"00000000{i}" for i in range(5)]  # each once: present ones not repeated
    assert rows["000000003"]["status"] == "failed_to_download"
    assert (rows["000000003"]["error_message"], rows["000000003"]["caption"]) == ("HTTP 404", "lost one")
    assert (rows["000000004"]["error_message"], rows["000000004"]["url"]) == ("failed_to_resize", "")
    # the url comes from the sample's json; a json that is not an object with a text url: the tar's name
    assert rows["000000000"]["url"] == "http://x/a.jpg"
    assert rows["000000001"]["url"] == "00000.tar#000000001"
    assert rows["000000002"]["url"] == "00000.tar#000000002"


def test_a_parquet_beside_a_tar_that_is_not_img2datasets_is_ignored_and_a_damaged_one_refused(
    img2dataset_shard, tmp_path
):
    pl.DataFrame({"id": [1], "note": ["x"]}).write_parquet(img2dataset_shard / "00000.parquet")
    work = WorkDir(tmp_path / "w")
    run_import(img2dataset_shard, work)
    assert sorted(_rows(work)) == ["000000000", "000000001", "000000002"]
    (img2dataset_shard / "00000.parquet").write_bytes(b"PAR1 damaged" * 8)
    with pytest.raises(UserError, match=r"00000.parquet: cannot read as parquet \("):
        run_import(img2dataset_shard, WorkDir(tmp_path / "w2"))


def test_rekey_gives_a_repeated_key_its_own_row_and_refuses_a_junk_tar(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    first, again = encode(photo(1, (64, 48))), encode(photo(2, (64, 48)))
    write_tar(src / "00000.tar", [("a.jpg", first), ("b.jpg", again), ("a.jpg", again)])
    work = WorkDir(tmp_path / "w")
    summary = run_import(src, work, rekey=True)
    assert summary["in_place"] is False and summary["rekeyed"] is True
    rows = _rows(work)
    assert sorted(rows) == ["00000/a", "00000/a~2", "00000/b"]
    assert rows["00000/a~2"]["status"] == "failed_to_download"
    assert rows["00000/a~2"]["error_message"].startswith("repeated key: another sample named a in ")
    with tarfile.open(work.download_tar(0)) as tar:
        assert tar.extractfile("00000/a.jpg").read() == first  # type: ignore[union-attr]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "00000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(UserError, match=r"00000.tar: not a readable tar \("):
        run_import(junk, WorkDir(tmp_path / "w2"), rekey=True)


def test_beside_rows_count_once_and_a_bare_key_status_parquet_is_read(tmp_path):
    """A row the tar holds is the tar's, whatever the parquet says of it (one row per key); a parquet
    with only key and status still names the rows that never reached the tar."""
    src = tmp_path / "s"
    src.mkdir()
    write_tar(src / "00000.tar", [("000000000.jpg", encode(photo(1, (64, 48))))])
    pl.DataFrame(
        {"key": ["000000000", "000000001"], "status": ["failed_to_download", "failed_to_download"]}
    ).write_parquet(src / "00000.parquet")
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    rows = _rows(work)
    assert sorted(rows) == ["000000000", "000000001"] and len(pl.read_parquet(work.download_parquet(0))) == 2
    assert rows["000000000"]["status"] == "success"
    assert (rows["000000001"]["status"], rows["000000001"]["error_message"]) == (
        "failed_to_download",
        "failed_to_download",
    )


def test_new_shards_are_byte_stable_and_record_what_img2dataset_records(tmp_path):
    """A shard the import writes: members with mtime 0 and mode 644, the json member's keys sorted
    (identical inputs, identical bytes), img2dataset's stats fields, and the EXIF orientation read
    from the header (recorded, never applied)."""
    from PIL import Image

    src = tmp_path / "f"
    src.mkdir()
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(1, (64, 48)).save(rotated, "JPEG", exif=exif)
    (src / "a.jpg").write_bytes(rotated.getvalue())
    (src / "b.jpg").write_bytes(b"not an image")
    (src / "c.txt.bak").write_bytes(b"x")
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    with tarfile.open(work.download_tar(0)) as tar:
        members = tar.getmembers()
        assert {(m.mtime, m.mode) for m in members} == {(0, 0o644)}
        meta = tar.extractfile("a.json").read()  # type: ignore[union-attr]
    assert list(json.loads(meta)) == sorted(json.loads(meta)) and json.loads(meta)["exif_orientation"] == 6
    assert _rows(work)["a"]["exif_orientation"] == 6
    stats = json.loads(work.download_stats(0).read_text())
    assert stats == {
        "count": 3,
        "successes": 1,  # b.jpg does not open, c.txt.bak is no image: a row each
        "failed_to_download": 2,
        "failed_to_resize": 0,
        "status_dict": {"success": 1, "failed": 2},
    }
