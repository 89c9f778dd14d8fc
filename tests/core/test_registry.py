"""One registry of stages (dedup/stages.py): a package adds a stage by entry point and it runs in
`dedup run` and as a command; the CLI and `dedup run` drive a stage the same way."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import encode, photo, run_cli

from dedup.core.config import EmbedConfig
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import
from dedup.embed.stage import run_embed
from dedup.stages import registry


def test_the_registry_orders_dedup_run_and_names_every_stage():
    names = list(registry())
    assert names[:4] == ["download", "embed", "cluster", "write"] and names[-1] == "report"
    assert "attack" in names  # the attack package's stage, through its entry point


def _package(root):
    """An installed package, as pip would leave it: a module and a dist-info with an entry point."""
    (root / "hello_stage.py").write_text(
        "def run(config, work, executor):\n"
        "    (work.root / 'hello.txt').write_text(f'hello from {executor.name}')\n"
        "    print('hello stage ran')\n"
    )
    info = root / "hello_stage-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-stage\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dedup.pipeline_stages]\nhello = hello_stage:run\n")


def test_a_stage_added_by_entry_point_runs_in_dedup_run_and_as_a_command(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _package(site)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    work = tmp_path / "w"
    work.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workdir: {work}\nstages: [hello]\n")  # a config may name it: the registry knows it
    r = run_cli("run", str(cfg))
    assert r.returncode == 0 and "== hello" in r.stdout and "hello stage ran" in r.stdout, r.stderr
    assert (work / "hello.txt").read_text() == "hello from local"
    (work / "hello.txt").unlink()
    r = run_cli("stage", "hello", str(work))
    assert r.returncode == 0 and (work / "hello.txt").exists(), r.stderr
    monkeypatch.delenv("PYTHONPATH")  # the package uninstalled
    without = run_cli("stage", "hello", str(work))
    assert without.returncode == 2 and "unknown stage(s) hello" in without.stderr


@pytest.fixture
def embedded(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(encode(photo(i, (120, 90))))
    (src / "0_copy.jpg").write_bytes(encode(photo(0, (120, 90)).resize((100, 75))))
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    import polars as pl

    truth = tmp_path / "truth.parquet"
    pl.DataFrame({"key": ["0", "0_copy", "1", "2", "3", "4"], "group": [0, 0, 1, 2, 3, 4]}).write_parquet(
        truth
    )
    return work, truth


def test_dedup_cluster_and_dedup_run_leave_the_same_files_and_print_the_same_evaluation(embedded, tmp_path):
    work, truth = embedded
    other = WorkDir(tmp_path / "w2")
    shutil.copytree(work.root, other.root)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"workdir: {other.root}\nembed: {{embedder: descriptor}}\ncluster: {{ground_truth: {truth}}}\n"
    )
    a = run_cli("cluster", str(work.root), "-c", str(cfg), "--no-progress")
    b = run_cli("run", str(cfg), "--stages", "cluster")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    evaluation = [line for line in a.stdout.splitlines() if "against" in line or "precision" in line]
    assert evaluation and all(line in b.stdout for line in evaluation)
    for name in ("pairs.parquet", "clusters.parquet"):
        assert (work.root / "cluster" / name).read_bytes() == (other.root / "cluster" / name).read_bytes()
