"""The cluster stage's verify step (#24): units of pair chunks, each with its evidence part and marker;
results that depend only on the data and the settings (not the hash seed, the thread count or the
unit size); a killed run that resumes from its finished units and ends byte-identical."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dedup.cluster.stage import run_cluster
from dedup.cluster.verify import VerifyStage, chunk_pairs
from dedup.core.config import ClusterConfig
from dedup.core.layout import WorkDir

RUN = """
import sys
import dedup.cluster.verify
dedup.cluster.verify.VERIFY_CHUNK = 512  # several chunks on the small demo (one component), so units vary
from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig
from dedup.core.layout import WorkDir
run_cluster(ClusterConfig(verify_workers=int(sys.argv[2]), verify_unit_pairs=int(sys.argv[3])),
            WorkDir(sys.argv[1]), progress=False, force=True)
"""


def _copy(small_demo: WorkDir, dest: Path) -> WorkDir:
    shutil.copytree(small_demo.root, dest, symlinks=True)
    return WorkDir(dest)


def _cluster_in_a_process(work: WorkDir, seed: str, workers: int, unit_pairs: int) -> None:
    env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(work.root), str(workers), str(unit_pairs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_pairs_and_clusters_are_byte_identical_across_hash_seeds_threads_and_unit_sizes(small_demo, tmp_path):
    one, two = _copy(small_demo, tmp_path / "one"), _copy(small_demo, tmp_path / "two")
    _cluster_in_a_process(one, "1", workers=1, unit_pairs=5000)
    _cluster_in_a_process(two, "4242", workers=2, unit_pairs=40)
    assert len(list(two.verify_dir.glob("part-*.parquet"))) > len(list(one.verify_dir.glob("part-*.parquet")))
    assert pl.read_parquet(one.pairs)["verdict"].drop_nulls().len() > 50  # the verifier did work
    for name in ("pairs", "clusters"):
        assert getattr(one, name).read_bytes() == getattr(two, name).read_bytes(), name


class _Killed(Exception):
    pass


def test_a_verify_step_killed_after_some_units_resumes_from_them_and_ends_byte_identical(
    small_demo, tmp_path, monkeypatch
):
    import dedup.cluster.verify as verify

    monkeypatch.setattr(verify, "VERIFY_CHUNK", 512)  # several chunks: the small demo is one component
    whole, resumed = _copy(small_demo, tmp_path / "whole"), _copy(small_demo, tmp_path / "resumed")
    config = ClusterConfig(verify_workers=1, verify_unit_pairs=40)
    run_cluster(config, whole, progress=False, force=True)
    shutil.rmtree(resumed.cluster_dir)  # a work directory embedded, never clustered
    resumed.marker("cluster").unlink()

    done_units: list[int] = []
    process = VerifyStage.process

    def dies_after_three(self, work, unit, state, advance=None):
        if len(done_units) == 3:
            raise _Killed
        out = process(self, work, unit, state, advance)
        done_units.append(unit.index)
        return out

    monkeypatch.setattr(VerifyStage, "process", dies_after_three)
    with pytest.raises(_Killed):
        run_cluster(config, resumed, progress=False)
    monkeypatch.setattr(VerifyStage, "process", process)
    assert not resumed.clusters.exists() and resumed.candidates.exists()

    ran: list[int] = []

    def counted(self, work, unit, state, advance=None):
        ran.append(unit.index)
        return process(self, work, unit, state, advance)

    monkeypatch.setattr(VerifyStage, "process", counted)
    summary = run_cluster(config, resumed, progress=False)
    assert not set(ran) & set(done_units) and len(ran) == summary["verify_units"] - 3
    for name in ("pairs", "clusters"):
        assert getattr(whole, name).read_bytes() == getattr(resumed, name).read_bytes(), name


def test_chunks_keep_components_whole_and_cut_only_larger_ones(monkeypatch):
    import dedup.cluster.verify as verify

    monkeypatch.setattr(verify, "VERIFY_CHUNK", 256)
    VERIFY_CHUNK = 256
    # two components of 3 pairs, one of VERIFY_CHUNK + 5 pairs (a star around node 0)
    big = VERIFY_CHUNK + 5
    pi = np.array([big + 1, big + 2, big + 1, big + 10, big + 11, big + 10] + [0] * big)
    pj = np.array([big + 2, big + 3, big + 3, big + 11, big + 12, big + 12, *range(1, big + 1)])
    order = np.arange(len(pi))[::-1]  # the star first
    ordered, chunk = chunk_pairs(pi, pj, order, big + 13)
    assert sorted(ordered.tolist()) == list(range(len(pi)))
    star = np.isin(ordered, np.arange(6, len(pi)))
    assert star[:big].all()  # a component stays together, in the given order
    assert np.bincount(chunk).tolist() == [VERIFY_CHUNK, 5, 3, 3]  # only the large one is cut


def test_a_verify_unit_is_not_reused_once_its_images_changed():
    """A unit names its pairs by image index; new data can give the same indices to other images, so
    its key holds where each image sits and the embed outputs the plan came from."""
    from dedup.cluster.verify import PLAN_SCHEMA, _digest

    row = {c: [0] for c in PLAN_SCHEMA} | {"b": [1], "stretch_first": [True], "window_search": [True]}
    table = pl.DataFrame(row, schema=PLAN_SCHEMA)
    moved = table.with_columns(pl.lit(512, dtype=pl.Int64).alias("b_start"))
    assert _digest(table) != _digest(moved)
    stage = VerifyStage(ClusterConfig(), decision="d", embedded="before")
    assert stage.key("x") != VerifyStage(ClusterConfig(), decision="d", embedded="after").key("x")
