"""`dedup status` after reruns with changed settings (#14): each stage's line names the settings
that made its shards, and a stage made before its upstream changed says STALE."""

from __future__ import annotations

import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig
from dedup.core.layout import WorkDir
from dedup.core.markers import read_marker
from dedup.embed.stage import run_embed


def _lines(cli, work: WorkDir) -> dict[str, str]:
    out = cli("status", str(work.root)).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_status_after_a_rerun_with_changed_embed_settings(tmp_path, cli):
    work = WorkDir(tmp_path / "w")
    for shard in range(2):
        items = [(f"{shard}{i:04d}", encode(photo(10 * shard + i)), "a photo", "jpg") for i in range(4)]
        write_download_shard(work, shard, items)
    small = EmbedConfig(embedder="descriptor", descriptor_size=8)
    run_embed(small, work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    first = _lines(cli, work)
    # the cluster stage's steps, each with its own markers (#24)
    assert "cluster-candidates" in first and "complete" in first["cluster-candidates"]
    assert "cluster-verify" in first and "unit(s)" in first["cluster-verify"]
    old = str(read_marker(work, "embed", 0)["config_hash"])
    assert "STALE" not in first["cluster"] and old in first["embed"]

    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)  # other settings: every shard redone
    after = _lines(cli, work)
    new = str(read_marker(work, "embed", 1)["config_hash"])
    assert new != old and new in after["embed"] and old not in after["embed"], after["embed"]
    assert "2 shard(s)" in after["embed"] and "stale" not in after["embed"]
    assert "STALE: embed changed since" in after["cluster"], after["cluster"]

    run_cluster(ClusterConfig(), work, progress=False)
    assert "STALE" not in _lines(cli, work)["cluster"]


@pytest.mark.parametrize(
    ("module", "setting"),
    [("verifier_settings", "COPY_MATCH"), ("verifier_settings", "COARSE_FLOOR"), ("grouping", "HEAD_TRIALS")],
)
def test_changing_any_verifier_or_grouping_number_redoes_the_cluster_stage(
    tmp_path, monkeypatch, module, setting
):
    """The verifier's and the grouping's numbers decide groups: the cluster stage's key is derived from
    their values and their code (no hand-bumped version), so a changed number is never "up to date"."""
    import importlib

    from dedup.cluster.fingerprint import decision_fingerprint

    deciding = importlib.import_module(f"dedup.cluster.{module}")

    work = WorkDir(tmp_path / "w")
    items = [(f"0{i:04d}", encode(photo(i)), "a photo", "jpg") for i in range(4)]
    write_download_shard(work, 0, items)
    run_embed(EmbedConfig(embedder="descriptor", descriptor_size=8), work, progress=False)
    assert not run_cluster(ClusterConfig(), work, progress=False).get("skipped")
    assert run_cluster(ClusterConfig(), work, progress=False).get("skipped")
    before = decision_fingerprint()
    monkeypatch.setattr(deciding, setting, getattr(deciding, setting) * 0.9 + 1)
    assert decision_fingerprint() != before
    assert not run_cluster(ClusterConfig(), work, progress=False).get("skipped")
    assert not hasattr(deciding, "VERSION")
