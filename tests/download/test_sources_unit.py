"""What a source is, below the import: the root of several named files, how a source is named, the
modification times object stores report, and how a change is described."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest
from fsspec.implementations.local import LocalFileSystem

from dedup.core.errors import UserError
from dedup.download.sources import (
    Source,
    _mtime,
    describe_changes,
    hidden_count,
    listing,
    open_source,
    source_identity,
)


def test_mtimes_in_each_form_an_object_store_reports():
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert _mtime({"mtime": 5}) == 5.0
    assert _mtime({"LastModified": when}) == when.timestamp()  # s3
    assert _mtime({"updated": "2024-01-02T03:04:05Z"}) == when.timestamp()  # gcs
    assert _mtime({"created": "not a date", "last_modified": 7.5}) == 7.5  # a bad form is skipped
    assert _mtime({}) == 0.0


def test_the_root_of_several_named_files_is_their_deepest_common_folder():
    fs = LocalFileSystem()

    def root(*paths: str) -> str:
        return Source("x", fs, paths, "parquet").root

    assert root("/d/a/b/x.parquet", "/d/a/c/y.parquet") == "/d/a"
    assert root("/d/a/x.parquet", "/d/a/b/c/y.parquet") == "/d/a"
    assert root("/d/a/b/x.parquet", "/d/a/b/y.parquet", "/d/e/z.parquet") == "/d"
    assert root("x.parquet", "y.parquet") == ""


def test_a_source_is_named_by_its_absolute_path_or_as_given(tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    monkeypatch.chdir(tmp_path)
    assert source_identity(open_source("s")) == str((tmp_path / "s").resolve())
    pattern = str(tmp_path / "s" / "*.jpg")
    assert (
        source_identity(Source(pattern, LocalFileSystem(), (str(tmp_path / "s" / "a.jpg"),), "folder"))
        == pattern
    )
    braces = str(tmp_path / "s" / "{a,b}.jpg")
    assert (
        source_identity(Source(braces, LocalFileSystem(), (str(tmp_path / "s" / "a.jpg"),), "folder"))
        == braces
    )


def test_what_cannot_be_opened_is_named_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^nosuch://x: cannot open \("):
        open_source("nosuch://x")
    with pytest.raises(UserError, match=r"missing.tar: no such file or folder$"):
        open_source(tmp_path / "missing.tar")
    with pytest.raises(UserError, match=r"the pattern matches no file$"):
        open_source(str(tmp_path / "*.tar"))


def test_a_listing_is_as_opened_unless_asked_fresh_and_changes_are_described(tmp_path):
    src_dir = tmp_path / "f"
    src_dir.mkdir()
    (src_dir / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (src_dir / ".hidden").write_bytes(b"")
    src = open_source(src_dir)
    assert hidden_count(src) == 1
    assert hidden_count(Source("x", src.fs, (str(src_dir / "a.jpg"),), "folder")) == 0  # no folder walked
    (src_dir / "b.jpg").write_bytes(b"\xff\xd8\xff")
    assert listing(src)["path"].to_list() == ["a.jpg"]
    assert listing(src, fresh=True)["path"].to_list() == ["a.jpg", "b.jpg"]
    few = {"added": ["a", "b", "c"], "deleted": [], "replaced": ["r"]}
    assert describe_changes(few) == "3 added (a, b, c); 1 replaced (r)"
    assert describe_changes({"added": ["a", "b", "c", "d"]}) == "4 added (a, b, c, ...)"
    assert isinstance(listing(src), pl.DataFrame)
