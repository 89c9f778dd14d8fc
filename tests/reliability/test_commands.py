"""What had no test (#15): the Makefile's stage targets and `--from-precomputed` through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REPO, encode, photo, write_download_shard

from dedup.core.layout import WorkDir


def _work(root: Path) -> WorkDir:
    work = WorkDir(root)
    items = [
        (f"{i:09d}", encode(photo(i % 3, (160, 120)), quality=85 + i % 2 * 5), f"c{i}", "jpg")
        for i in range(6)
    ]
    write_download_shard(work, 0, items)
    return work


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_the_makefile_stage_targets_run_the_stages(tmp_path):
    work = _work(tmp_path / "w")
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {work.root}\nembed: {{embedder: descriptor}}\n")
    bin_dir = str(Path(sys.executable).parent)
    for target in ("embed", "cluster", "write"):
        r = subprocess.run(
            ["make", "-s", "-o", ".venv/.installed", target, f"CONFIG={config}", f"BIN={bin_dir}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, (target, r.stdout[-1000:], r.stderr[-1000:])
    ledger = pl.read_parquet(work.ledger)
    assert ledger.height == 6 and ledger["kept"].sum() == 3


def test_from_precomputed_through_the_cli(tmp_path, cli):
    first = _work(tmp_path / "a")
    assert cli("embed", str(first.root), "--embedder", "descriptor").returncode == 0
    released = tmp_path / "released"
    (released / "img_emb").mkdir(parents=True)
    (released / "metadata").mkdir()
    shutil.copy(first.img_emb(0), released / "img_emb" / "img_emb_0.npy")
    pl.read_parquet(first.metadata(0)).select("key", "url").write_parquet(
        released / "metadata" / "metadata_0.parquet"
    )
    second = _work(tmp_path / "b")
    r = cli("embed", str(second.root), "--from-precomputed", str(released))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(second.img_emb(0)), np.load(first.img_emb(0)))
    assert cli("cluster", str(second.root)).returncode == 0
