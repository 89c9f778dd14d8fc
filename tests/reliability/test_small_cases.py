"""The smaller cases of #15 (10): --signals exact, output modes, a megabyte caption in the report, an
EXIF-rotated copy, and the hub weights' offline error that must come in seconds."""

from __future__ import annotations

import io
import os
import stat
import time

import polars as pl
import pytest
from conftest import encode, photo, write_download_shard
from PIL import Image

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, ReportConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed
from dedup.report.stage import run_report
from dedup.write.stage import run_write


def _exif_rotated_copy(im: Image.Image) -> bytes:
    """The same picture re-saved with its pixels turned 90 degrees and EXIF orientation 6 (rotate 90
    clockwise to display), as phones save photos: every viewer shows it exactly like the original."""
    turned = im.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    turned.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


@pytest.fixture
def work(tmp_path):
    w = WorkDir(tmp_path / "w")
    a, b, c = photo(1, (320, 240)), photo(2, (320, 240)), photo(3, (320, 240))
    items = [
        ("000000000", encode(a, quality=95), "a", "jpg"),
        ("000000001", encode(a, quality=95), "a again, byte for byte", "jpg"),
        ("000000002", encode(a.resize((200, 150)), quality=60), "a smaller", "jpg"),
        ("000000003", encode(b, quality=95), "b", "jpg"),
        ("000000004", _exif_rotated_copy(b), "b as a phone saves it", "jpg"),
        ("000000005", encode(c, quality=95), "x" * 1_000_000, "jpg"),
    ]
    write_download_shard(w, 0, items)
    run_embed(EmbedConfig(embedder="descriptor"), w, progress=False)
    return w


def _reasons(work: WorkDir) -> dict[str, str]:
    run_write(WriteConfig(), work, progress=False)
    ledger = pl.read_parquet(work.ledger)
    return dict(zip(ledger["key"], ledger["reason"], strict=True))


def test_signals_exact_removes_only_byte_identical_copies(work):
    run_cluster(ClusterConfig(signals=["exact"]), work, progress=False)
    reasons = _reasons(work)
    assert reasons["000000001"] == "duplicate"
    assert [k for k, r in reasons.items() if r == "duplicate"] == ["000000001"]


def test_an_exif_rotated_copy_is_found(work):
    run_cluster(ClusterConfig(), work, progress=False)
    reasons = _reasons(work)
    assert {reasons["000000003"], reasons["000000004"]} == {"kept", "duplicate"}
    assert reasons["000000002"] == "duplicate" and reasons["000000005"] == "kept"


def test_outputs_follow_the_umask_and_a_megabyte_caption_is_cut_in_the_report(work):
    old = os.umask(0o022)
    try:
        run_cluster(ClusterConfig(), work, progress=False)
        run_write(WriteConfig(), work, progress=False)
        run_report(ReportConfig(), work)
    finally:
        os.umask(old)
    for path in (work.ledger, work.dedup_tar(0), work.clusters, work.report_dir / "index.html"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    page = (work.report_dir / "index.html").read_text()
    assert "x" * 300 in page and "x" * 301 not in page and "(1,000,000 characters)" in page
    assert len(page) < 500_000


def test_hub_weights_offline_is_a_one_line_error_in_seconds(tmp_path, cli, monkeypatch):
    w = WorkDir(tmp_path / "w")
    write_download_shard(w, 0, [("000000000", encode(photo(1)), "a", "jpg")])
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port stands for "no network"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    started = time.time()
    r = cli("embed", str(w.root), "--embedder", "clip")
    assert time.time() - started < 30
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not in the local cache" in errors[0] and "--pretrained" in errors[0]


def test_an_exif_rotated_copy_hashes_like_its_original(work):
    """Found by the cheap global signals, not only by the verifier's keypoints: the embed stage sees
    the image as displayed."""
    import numpy as np

    from dedup.embed.hashing import hamming

    meta = pl.read_parquet(work.metadata(0)).sort("key")
    ph = meta["phash"].to_numpy().astype(np.uint64)
    assert int(hamming(ph[3:4], ph[4:5])[0]) <= 4
    assert meta["width"][4] == 320 and meta["height"][4] == 240  # as displayed
