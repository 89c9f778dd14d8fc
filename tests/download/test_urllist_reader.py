"""The URL-list kind: `dedup import` recognises a LAION-style table of URLs in each format img2dataset
reads and sends it to `dedup download`; a table without a URL column is no URL list."""

from __future__ import annotations

import json

import pytest

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import
from dedup.download.readers import importable_kinds


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("urls.csv", '"url",caption\nhttp://127.0.0.1/a.jpg,a\n'),
        ("urls.tsv", "URL\tTEXT\nhttp://127.0.0.1/a.jpg\ta\n"),
        ("urls.jsonl", json.dumps({"url": "http://127.0.0.1/a.jpg", "caption": "a"}) + "\n"),
    ],
)
def test_a_url_list_in_any_format_is_sent_to_dedup_download(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=rf"{name}: a URL list, not images: download it with `dedup download"):
        run_import(path, WorkDir(tmp_path / "w"))
    assert not (tmp_path / "w" / "download_summary.json").exists()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("notes.csv", "id,caption\n1,a\n"),  # no url column
        ("lines.jsonl", json.dumps(["http://127.0.0.1/a.jpg"]) + "\n"),  # records that are not objects
        ("broken.jsonl", "{not json\n"),
    ],
)
def test_a_table_without_a_url_column_is_no_url_list(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=r"no images found, and no other kind of source either"):
        run_import(path, WorkDir(tmp_path / "w"))


def test_the_url_list_is_a_kind_that_is_recognised_not_imported():
    assert importable_kinds() == ("folder", "parquet", "shards")
