"""Write stage, ledger and verify, on the small demo corpus (real downloads, failures included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import webdataset as wds

from dedup.core.config import WriteConfig
from dedup.core.layout import WorkDir, shards_in
from dedup.core.shards import iter_samples
from dedup.download.stage import download_rows
from dedup.write.stage import run_write
from dedup.write.verify import verify

pytestmark = pytest.mark.slow


def _copy(work: WorkDir, dst) -> WorkDir:
    shutil.copytree(work.root, dst, symlinks=True)
    return WorkDir(dst)


def _input_members(work: WorkDir) -> dict[str, dict[str, bytes]]:
    return {
        s.key: s.members for shard in work.download_shards() for s in iter_samples(work.download_tar(shard))
    }


def test_ledger_accounts_for_every_input_sample(small_demo):
    ledger = pl.read_parquet(small_demo.ledger)
    inputs = download_rows(small_demo)
    assert sorted(ledger["key"].to_list()) == sorted(inputs["key"].to_list())
    reasons = dict(ledger.group_by("reason").len().rows())
    assert reasons["download_failed"] == int((inputs["status"] != "success").sum()) > 0
    assert reasons["duplicate"] > 0 and reasons["kept"] > 0
    dups = ledger.filter(pl.col("reason") == "duplicate")
    kept = set(ledger.filter(pl.col("kept"))["key"].to_list())
    assert dups["duplicate_of"].is_in(list(kept)).all()  # every removal points at what was kept
    assert dups["signal"].is_in(["exact", "phash", "embedding", "verified"]).all()
    assert dups["similarity"].is_not_null().all() and dups["cluster_id"].is_not_null().all()
    failed = ledger.filter(pl.col("reason") == "download_failed")
    assert failed["detail"].str.contains("http_4xx|truncated").all()


def test_output_reads_back_with_webdataset_and_polars_bytes_unchanged(small_demo):
    ledger = pl.read_parquet(small_demo.ledger)
    kept = set(ledger.filter(pl.col("kept"))["key"].to_list())
    shards = shards_in(small_demo.dedup_dir)
    urls = [str(small_demo.dedup_tar(s)) for s in shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == len(kept) and set(keys) == kept
    original = _input_members(small_demo)
    for s in samples:
        members = {k: v for k, v in s.items() if not k.startswith("__")}
        assert members == original[s["__key__"]]
    table = pl.concat([pl.read_parquet(small_demo.dedup_parquet(s)) for s in shards])
    assert table["key"].to_list() == keys  # the parquet lists the tar's samples in the tar's order
    assert {"url", "caption", "status", "sha256", "dedup_cluster_size"} <= set(table.columns)
    assert (table["status"] == "success").all()
    assert verify(small_demo) == []


def test_dry_run_writes_nothing(small_demo, tmp_path):
    work = _copy(small_demo, tmp_path / "w")
    shutil.rmtree(work.dedup_dir)
    work.ledger.unlink()
    report = run_write(WriteConfig(), work, dry_run=True, progress=False)
    assert report["dry_run"] and report["removed"] > 0
    assert report["by_reason"]["duplicate"]["bytes"] > 0
    assert not work.dedup_dir.exists() and not work.ledger.exists()


def test_same_input_same_bytes(small_demo, tmp_path):
    work = _copy(small_demo, tmp_path / "w")
    shutil.rmtree(work.dedup_dir)
    shutil.rmtree(work.manifest_dir / "write")
    run_write(WriteConfig(), work, progress=False)
    for s in shards_in(small_demo.dedup_dir):
        assert work.dedup_tar(s).read_bytes() == small_demo.dedup_tar(s).read_bytes()


def test_output_does_not_depend_on_writer_count(small_demo, tmp_path):
    outputs = []
    for workers in (1, 4):
        work = _copy(small_demo, tmp_path / f"w{workers}")
        shutil.rmtree(work.dedup_dir)
        shutil.rmtree(work.manifest_dir / "write")
        run_write(WriteConfig(samples_per_shard=40, workers=workers), work, progress=False)
        outputs.append({s: work.dedup_tar(s).read_bytes() for s in shards_in(work.dedup_dir)})
    assert len(outputs[0]) > 4
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("corruption", ["missing key", "duplicated key", "changed byte"])
def test_verify_catches_planted_corruption(small_demo, tmp_path, cli, corruption):
    work = _copy(small_demo, tmp_path / "w")
    tar = work.dedup_tar(0)
    data = bytearray(tar.read_bytes())
    from dedup.write.tar_index import index_tar

    spans = index_tar(tar, 0)
    first, second = spans[0], spans[1]
    if corruption == "missing key":
        data = data[: first.start] + data[first.end :]
    elif corruption == "duplicated key":
        data = data[: second.end] + data[second.start : second.end] + data[second.end :]
    else:
        import tarfile

        with tarfile.open(tar) as t:
            image = t.getmembers()[0]
        data[image.offset_data + image.size // 2] ^= 0x01  # one bit inside the first image's bytes
    tar.write_bytes(bytes(data))
    result = cli("verify", str(work.root))
    assert result.returncode == 1, result.stdout
    expected = {
        "missing key": f"kept sample {first.key} is missing",
        "duplicated key": f"output holds {second.key} 2 times",
        "changed byte": f"output member {first.key}.",
    }[corruption]
    assert expected in result.stderr
    assert cli("verify", str(small_demo.root)).returncode == 0


def test_sigkill_during_write_then_rerun_is_byte_identical(small_demo, tmp_path):
    clean = _copy(small_demo, tmp_path / "clean")
    killed = _copy(small_demo, tmp_path / "killed")
    for w in (clean, killed):
        shutil.rmtree(w.dedup_dir)
        shutil.rmtree(w.manifest_dir / "write")
    run_write(WriteConfig(samples_per_shard=1), clean, progress=False)
    n = len(shards_in(clean.dedup_dir))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dedup",
            "write",
            str(killed.root),
            "--samples-per-shard",
            "1",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    markers = killed.manifest_dir / "write"
    while len(list(markers.glob("*.json"))) < 6:  # shards finish out of order with several writers
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed.manifest_dir / "write").glob("*.json")))
    assert 6 <= done < n, "the kill must land mid-way"
    summary = run_write(WriteConfig(samples_per_shard=1), killed, progress=False)
    assert summary["written_shards"] == n - done
    assert sorted(p.name for p in killed.dedup_dir.iterdir()) == sorted(
        p.name for p in clean.dedup_dir.iterdir()
    )
    for s in range(n):
        assert killed.dedup_tar(s).read_bytes() == clean.dedup_tar(s).read_bytes()
    assert verify(killed) == []
