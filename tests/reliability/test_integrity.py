"""Integrity on read (#15 cases 4, 8 and the stray output tar of 10): a damaged tar, a damaged or
non-finite embedding file and missing stage files are one-line errors (exit 2) naming the file, never
a traceback, never silently processed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed
from dedup.write.stage import run_write


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def work(tmp_path):
    w = WorkDir(tmp_path / "w")
    write_download_shard(
        w, 0, [(f"{i:09d}", encode(photo(i, (160, 120)), quality=90), f"c{i}", "jpg") for i in range(6)]
    )
    return w


def test_a_truncated_download_tar_is_refused_by_embed(work, cli):
    tar = work.download_tar(0)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])  # cut inside a member
    _one_line_error(cli("embed", str(work.root), "--embedder", "descriptor"), "00000.tar", "damaged")
    assert not work.img_emb(0).exists()  # nothing half-written


def test_a_tar_cut_at_a_member_boundary_is_refused_by_embed(work, cli):
    import tarfile

    with tarfile.open(work.download_tar(0)) as t:
        members = t.getmembers()
    cut = members[9].offset  # the fourth sample's first header: three whole samples remain
    tar = work.download_tar(0)
    tar.write_bytes(tar.read_bytes()[:cut])
    _one_line_error(cli("embed", str(work.root), "--embedder", "descriptor"), "00000.tar", "3 of 6")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:100]),
        lambda p: p.write_bytes(b"garbage, not numpy"),
        lambda p: np.save(p, np.full((6, 48), np.nan, dtype=np.float16)),
        lambda p: np.save(p, np.zeros((5, 48), dtype=np.float16)),
    ],
    ids=["truncated", "garbage", "nan", "short"],
)
def test_a_damaged_embedding_file_is_refused_by_cluster(work, cli, damage):
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    damage(work.img_emb(0))
    _one_line_error(cli("cluster", str(work.root)), "img_emb_00000.npy")


def test_missing_stage_files_are_one_line_errors(work, cli):
    _one_line_error(cli("write", str(work.root)), "clusters.parquet")  # nothing clustered yet
    _one_line_error(cli("verify", str(work.root)), "ledger.parquet")
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    work.download_parquet(0).unlink()
    _one_line_error(cli("write", str(work.root)), "00000.parquet")
    _one_line_error(cli("report", str(work.root)), "00000.parquet")


def test_download_folder_that_is_a_file_is_a_one_line_error(tmp_path, cli):
    root = tmp_path / "w"
    root.mkdir()
    (root / "download").write_text("not a folder")
    _one_line_error(cli("embed", str(root), "--embedder", "descriptor"), "download")


def test_verify_reports_a_stray_output_tar(work, cli):
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(), work, progress=False)
    (work.dedup_dir / "00007.tar").write_bytes(b"\0" * 1024)
    r = cli("verify", str(work.root), "--skip-bytes")
    assert r.returncode != 0 and "00007.tar: an output tar without its _stats.json" in r.stdout + r.stderr
