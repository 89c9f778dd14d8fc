"""Tests that fail when the code is wrong: each catches one of the five one-line bugs planted in a copy of
the code that the earlier suite let through (#15), through the paths a user takes (the ledger, the
default policy, `dedup run`, the tar on disk, the numbers in the HTML)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.representatives import RankContext, rank
from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, ReportConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed
from dedup.report.stage import run_report
from dedup.write.stage import run_write


def _ledger(work: WorkDir) -> dict[str, dict]:
    return {r["key"]: r for r in pl.read_parquet(work.ledger).iter_rows(named=True)}


@pytest.fixture
def set_with_copies(tmp_path):
    """Key order puts a small copy first; the largest copy of each photo comes later."""
    big1, big2 = photo(1, (480, 360)), photo(2, (480, 360))
    items = [
        ("000000000", encode(big1.resize((240, 180)), quality=80), "a barn in the snow", "jpg"),
        ("000000001", encode(big1, quality=92), "a barn in the snow", "jpg"),
        ("000000002", encode(big1.resize((360, 270)), quality=85), "barn snow | stock photo", "jpg"),
        ("000000003", encode(big2.resize((240, 180)), quality=80), "a lake", "jpg"),
        ("000000004", encode(big2, quality=92), "a lake", "jpg"),
        ("000000005", encode(photo(3, (300, 200)), quality=90), "a field", "jpg"),
        ("000000006", encode(photo(4, (300, 200)), quality=90), "a forest", "jpg"),
    ]
    w = WorkDir(tmp_path / "w")
    write_download_shard(w, 0, items)
    return w


def test_reference_duplicates_are_not_kept_through_write_and_the_ledger(set_with_copies, tmp_path):
    """Planted: the ledger checking "kept" before "reference duplicate"."""
    ref = WorkDir(tmp_path / "ref")
    write_download_shard(ref, 0, [("r00000000", encode(photo(2, (480, 360)), quality=90), "lake", "jpg")])
    run_embed(EmbedConfig(embedder="descriptor"), ref, progress=False)
    run_embed(EmbedConfig(embedder="descriptor"), set_with_copies, progress=False)
    run_cluster(ClusterConfig(against=str(ref.root)), set_with_copies, progress=False)
    summary = run_write(WriteConfig(), set_with_copies, progress=False)
    ledger = _ledger(set_with_copies)
    for key in ("000000003", "000000004"):  # the lake and its copy are both in the reference set
        assert ledger[key]["reason"] == "reference_duplicate" and not ledger[key]["kept"], ledger[key]
        assert ledger[key]["duplicate_of"] == "r00000000"
    assert ledger["000000001"]["reason"] == "kept" and ledger["000000005"]["reason"] == "kept"
    assert summary["kept"] == 3


def test_the_default_policy_keeps_the_largest_copy_not_the_first_seen(set_with_copies, tmp_path, cli):
    """Planted: the pipeline choosing the first-seen image instead of the largest (the default)."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"workdir: {set_with_copies.root}\nembed: {{embedder: descriptor}}\nstages: [embed, cluster, write]\n"
    )
    r = cli("run", str(config))
    assert r.returncode == 0, r.stderr
    ledger = _ledger(set_with_copies)
    assert ledger["000000001"]["kept"] and ledger["000000004"]["kept"]
    assert (
        ledger["000000000"]["duplicate_of"] == "000000001"
        and ledger["000000003"]["duplicate_of"] == "000000004"
    )


def test_the_caption_policy_breaks_ties_by_resolution():
    """Planted: the caption policy losing its resolution tie-break."""
    ctx = RankContext(
        embeddings=np.eye(4, dtype=np.float32),
        area=np.array([100, 400, 200, 50]),
        seen=np.arange(4),
        captions=["a red barn"] * 3 + ["a red barn | stock photo | free download"],
    )
    order = rank("caption", np.arange(4), ctx)
    assert list(order[:3]) == [1, 2, 0] and order[3] == 3


def test_output_tars_end_with_two_zero_blocks_and_gnu_tar_reads_them_without_warning(set_with_copies):
    """Planted: a tar written with one end-of-archive block instead of two."""
    run_embed(EmbedConfig(embedder="descriptor"), set_with_copies, progress=False)
    run_cluster(ClusterConfig(), set_with_copies, progress=False)
    run_write(WriteConfig(samples_per_shard=2), set_with_copies, progress=False)
    tars = sorted(set_with_copies.dedup_dir.glob("*.tar"))
    assert len(tars) == 2
    for tar in tars:
        data = tar.read_bytes()
        assert data.endswith(b"\0" * 1024) and len(data) % 512 == 0
        if shutil.which("tar"):
            r = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True)
            assert r.returncode == 0 and r.stderr == "", r.stderr


def test_numbers_shown_in_the_html_report_match_the_data(set_with_copies):
    """Planted: the report's "duplicates to remove" card showing the group count."""
    run_embed(EmbedConfig(embedder="descriptor"), set_with_copies, progress=False)
    run_cluster(ClusterConfig(), set_with_copies, progress=False)
    run_write(WriteConfig(), set_with_copies, progress=False)
    run_report(ReportConfig(), set_with_copies)
    page = (set_with_copies.report_dir / "index.html").read_text()
    cards = {
        label: value
        for value, label in re.findall(r'<div class="card"><b>([^<]*)</b><span>([^<]*)</span>', page)
    }
    clusters = pl.read_parquet(set_with_copies.clusters)
    ledger = pl.read_parquet(set_with_copies.ledger)
    removed = int((ledger["reason"] == "duplicate").sum())
    groups = clusters.group_by("cluster_id").len()
    # four groups, three removals, two groups with duplicates: a card showing the wrong count shows
    assert removed == 3 and groups.height == 4 and groups.filter(pl.col("len") > 1).height == 2
    assert cards["duplicates to remove"] == f"{removed:,}"
    assert cards["groups with duplicates"] == "2"
    assert cards["copies in the largest group"] == str(int(groups["len"].max()))
    label = next(k for k in cards if k.startswith("groups among"))
    assert cards[label] == str(groups.height) and label == f"groups among {clusters.height} images"
