"""Input accounting (#15 cases 1-3): every row of the URL list has a ledger row, whatever its caption or
extra columns hold and whatever img2dataset records; another URL list into a used work directory is
refused, never resumed as if it were the same; results made from other inputs are redone."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest
from conftest import encode, photo

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, DownloadConfig, EmbedConfig, WriteConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.serve import serve_directory
from dedup.download.stage import download_rows, run_download
from dedup.download.urllist import image_key
from dedup.embed.stage import run_embed
from dedup.write.stage import run_write
from dedup.write.verify import verify


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(encode(photo(i, (128, 96))))
    with serve_directory(root) as base:
        yield root, base


def _chain(work: WorkDir) -> pl.DataFrame:
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(), work, progress=False)
    return pl.read_parquet(work.ledger)


def test_a_csv_caption_that_is_not_utf8_loses_no_row(site, tmp_path, cli):
    _, base = site
    url_list = tmp_path / "b.csv"
    url_list.write_bytes(
        f"URL,TEXT\n{base}/0.jpg,good\n{base}/1.jpg,caf\xe9\n{base}/2.jpg,plain\n".encode("latin-1")
    )
    r = cli("download", str(url_list), str(tmp_path / "w"), "--samples-per-shard", "2")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    rows = download_rows(WorkDir(tmp_path / "w"))
    assert rows.height == 3 and (rows["status"] == "success").all()
    captions = dict(zip(rows["key"], rows["caption"], strict=True))
    assert captions[image_key(0, 1, 2)] == "caf\ufffd"  # decoded with replacement, row kept


def test_binary_caption_and_datetime_extra_columns_lose_no_row(site, tmp_path):
    _, base = site
    url_list = tmp_path / "b.parquet"
    pl.DataFrame(
        {
            "URL": [f"{base}/{i}.jpg" for i in range(4)],
            "TEXT": [b"bytes caption", b"\xff\xfe odd", None, b"ok"],
            "when": [datetime(2024, 1, i + 1, 12, 0) for i in range(4)],
            "score": [0.5, 1.5, None, 2.0],
        }
    ).write_parquet(url_list)
    work = WorkDir(tmp_path / "w")
    cfg = DownloadConfig(
        url_list=str(url_list), samples_per_shard=2, save_additional_columns=["when", "score"]
    )
    summary = run_download(cfg, work)
    assert summary["successes"] == 4 and summary["failed"] == 0, summary
    df = pl.concat([pl.read_parquet(work.download_parquet(s)) for s in work.download_shards()])
    assert sorted(df["when"].to_list())[0].startswith("2024-01-01")
    assert sorted(df["caption"].drop_nulls().to_list()) == ["bytes caption", "ok", "\ufffd\ufffd odd"]
    assert _chain(work).height == 4 and verify(work) == []


def test_rows_img2dataset_did_not_record_still_get_ledger_rows(site, tmp_path):
    """A shard that died (no _stats.json) and a row its writer dropped: both accounted for."""
    _, base = site
    url_list = tmp_path / "u.parquet"
    pl.DataFrame(
        {"URL": [f"{base}/{i}.jpg" for i in range(6)], "TEXT": [f"c{i}" for i in range(6)]}
    ).write_parquet(url_list)
    work = WorkDir(tmp_path / "w")
    run_download(DownloadConfig(url_list=str(url_list), samples_per_shard=2), work)
    work.download_stats(2).unlink()  # shard 2 "died": img2dataset recorded nothing finished
    shard1 = pl.read_parquet(work.download_parquet(1))
    shard1.filter(pl.col("key") != image_key(1, 1, 2)).write_parquet(work.download_parquet(1))
    ledger = _chain(work)
    assert ledger.height == 6
    lost = ledger.filter(pl.col("reason") == "download_failed").sort("key")
    assert lost["key"].to_list() == [image_key(1, 1, 2), image_key(2, 0, 2), image_key(2, 1, 2)]
    assert "shard finished without it" in lost["detail"][0] and "did not finish" in lost["detail"][1]
    assert verify(work) == []


def test_verify_fails_when_an_input_row_has_no_ledger_row(site, tmp_path, cli):
    _, base = site
    url_list = tmp_path / "u.parquet"
    pl.DataFrame({"URL": [f"{base}/{i}.jpg" for i in range(3)], "TEXT": ["a", "b", "c"]}).write_parquet(
        url_list
    )
    work = WorkDir(tmp_path / "w")
    run_download(DownloadConfig(url_list=str(url_list)), work)
    ledger = _chain(work)
    ledger.filter(pl.col("key") != ledger["key"][0]).write_parquet(work.ledger)
    r = cli("verify", str(work.root), "--skip-bytes")
    assert (
        r.returncode != 0
        and f"input sample {ledger['key'][0]} is missing from the ledger" in r.stdout + r.stderr
    )


def test_another_url_list_into_a_used_work_dir_is_refused(site, tmp_path, cli):
    _, base = site
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(f"URL,TEXT\n{base}/0.jpg,a\n{base}/1.jpg,b\n")
    second.write_text(f"URL,TEXT\n{base}/2.jpg,c\n{base}/3.jpg,d\n")
    work = tmp_path / "w"
    assert cli("download", str(first), str(work)).returncode == 0
    marker = json.loads((work / "_manifest" / "download" / "00000.json").read_text())
    r = cli("download", str(second), str(work))
    assert r.returncode == 2 and "downloaded from another input" in r.stderr and "b.csv" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert json.loads((work / "_manifest" / "download" / "00000.json").read_text()) == marker  # untouched
    r = cli("download", str(first), str(work), "--samples-per-shard", "1")
    assert r.returncode == 2 and "samples_per_shard 10000 -> 1" in r.stderr, r.stderr
    again = cli("download", str(first), str(work), "--image-size", "64")  # the same list: resumes
    assert again.returncode == 0, again.stderr
    # the finished shard keeps the record of the settings that made it (dedup status reads it)
    assert json.loads((work / "_manifest" / "download" / "00000.json").read_text()) == marker


def test_new_data_after_write_is_never_reused_stale(site, tmp_path):
    """#15 case 2: the shards are downloaded again from scratch with other images under the same keys;
    embed redoes them, cluster is not "up to date", write's ledger describes the new images."""
    _, base = site
    url_list = tmp_path / "u.parquet"
    pl.DataFrame({"URL": [f"{base}/0.jpg", f"{base}/0.jpg"], "TEXT": ["a", "a"]}).write_parquet(url_list)
    work = WorkDir(tmp_path / "w")
    run_download(DownloadConfig(url_list=str(url_list)), work)
    assert _chain(work)["reason"].sort().to_list() == ["duplicate", "kept"]
    pl.DataFrame({"URL": [f"{base}/1.jpg", f"{base}/2.jpg"], "TEXT": ["b", "c"]}).write_parquet(url_list)
    run_download(DownloadConfig(url_list=str(url_list), incremental=False), work)
    with pytest.raises(UserError, match="run `dedup embed`"):
        run_cluster(ClusterConfig(), work, progress=False)
    ledger = _chain(work)
    assert ledger["reason"].to_list() == ["kept", "kept"] and verify(work) == []


def test_status_is_right_after_a_rerun_with_changed_inputs(site, tmp_path, cli):
    _, base = site
    url_list = tmp_path / "u.parquet"
    pl.DataFrame({"URL": [f"{base}/0.jpg", f"{base}/1.jpg"], "TEXT": ["a", "b"]}).write_parquet(url_list)
    work = WorkDir(tmp_path / "w")
    run_download(DownloadConfig(url_list=str(url_list)), work)
    _chain(work)
    fresh = cli("status", str(work.root)).stdout
    assert "STALE" not in fresh and "stale" not in fresh, fresh
    pl.DataFrame({"URL": [f"{base}/2.jpg", f"{base}/3.jpg"], "TEXT": ["c", "d"]}).write_parquet(url_list)
    run_download(DownloadConfig(url_list=str(url_list), incremental=False), work)
    out = cli("status", str(work.root)).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "1 stale" in lines["embed"], out
    assert "STALE" in lines["cluster"] and "STALE" in lines["write"], out
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    out = cli("status", str(work.root)).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "stale" not in lines["embed"] and "STALE: embed changed" in lines["cluster"], out
