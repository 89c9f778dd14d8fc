"""The local and Ray executors give the same files (#14): embed, cluster and write on a small real
dataset, byte for byte, and a Ray unit whose worker dies mid-write is retried to the same output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, photo, write_download_shard
from PIL import Image

from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.write.stage import WriteStage

ray = pytest.importorskip("ray", reason="the Ray executor needs the 'ray' extra")


@pytest.fixture(scope="module")
def ray_executor():
    from dedup.core.executors import RayExecutor

    with RayExecutor(num_cpus=2) as executor:
        yield executor


def _dataset(root: Path) -> WorkDir:
    """4 input shards of real-looking photographs: 66 distinct, plus exact, re-encoded, cropped and
    mirrored copies of some, spread over the shards (so groups cross shard boundaries)."""
    work = WorkDir(root)
    images = [(f"p{i:03d}", encode(photo(i, (96, 72)))) for i in range(66)]
    for i in range(0, 24, 3):
        im = photo(i, (96, 72))
        images.append((f"c{i:03d}j", encode(im, quality=60)))
        images.append((f"c{i:03d}x", encode(im)))
        images.append((f"c{i:03d}m", encode(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))))
    images.append(("c100k", encode(photo(5, (96, 72)).crop((6, 5, 90, 67)))))
    order = np.random.default_rng(0).permutation(len(images))
    for shard in range(4):
        rows = [images[t] for t in order[shard::4]]
        write_download_shard(
            work,
            shard,
            [(f"{shard:05d}{t:04d}", data, f"photo {name}", "jpg") for t, (name, data) in enumerate(rows)],
        )
    return work


def _outputs(work: WorkDir) -> dict[str, bytes]:
    """Every file the stages produce, except summaries and markers (they hold timings)."""
    out = {}
    for folder in (work.embed_dir, work.cluster_dir, work.dedup_dir):
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.name.endswith("_stats.json") and "summary" not in p.name:
                out[str(p.relative_to(work.root))] = p.read_bytes()
    out["ledger.parquet"] = work.ledger.read_bytes()
    return out


# small verify units, so the copy verifier runs as several Ray tasks (#24)
CLUSTER = ClusterConfig(search="ivf", nlist=4, nprobe=2, verify_unit_pairs=8)


def _pipeline(work: WorkDir, executor) -> None:
    from dedup.cluster.stage import run_cluster
    from dedup.embed.stage import run_embed
    from dedup.write.stage import run_write

    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False, executor=executor)
    run_cluster(CLUSTER, work, progress=False, executor=executor)
    run_write(WriteConfig(samples_per_shard=7), work, progress=False, executor=executor)


def test_ray_and_local_executors_write_the_same_bytes(tmp_path, ray_executor):
    local, remote = _dataset(tmp_path / "local"), _dataset(tmp_path / "ray")
    _pipeline(local, None)
    _pipeline(remote, ray_executor)
    a, b = _outputs(local), _outputs(remote)
    assert len([k for k in a if k.startswith("dedup/") and k.endswith(".tar")]) >= 8
    assert [k for k in a if k.startswith("cluster/verify/part-")]  # the verify step ran, on Ray's workers
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    import polars as pl

    ledger = pl.read_parquet(local.ledger)
    assert ledger.height == 66 + 25 and int((~ledger["kept"]).sum()) >= 16  # copies found, not a no-op


def test_search_pieces_run_as_ray_tasks_give_the_exact_same_pairs(ray_executor):
    from dedup.cluster.ivf import ivf_search
    from dedup.cluster.search import exact_search

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x[1::2] = x[::2] + rng.normal(0, 0.05, x[::2].shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for search in (
        lambda m: exact_search(x, 5, 0.9, block_size=500, mapper=m),
        lambda m: ivf_search(x, 5, 0.9, nlist=20, mapper=m),
    ):
        alone, spread = search(None), search(ray_executor)
        assert len(alone) > 1000
        for field in ("i", "j", "sim"):
            assert np.array_equal(getattr(alone, field), getattr(spread, field))


class _DiesOnceMidWrite(WriteStage):
    """Output shard 1's first attempt copies part of its bytes, then its worker process dies."""

    def __init__(self, config: WriteConfig, flags: Path) -> None:
        super().__init__(config)
        self.flags = flags

    def process(self, work, unit, state, advance=None):
        flag = self.flags / f"attempt-{unit.index}-{os.getpid()}"
        attempts = list(self.flags.glob(f"attempt-{unit.index}-*"))
        flag.write_text("")
        if unit.index == 1 and not attempts:
            import dedup.write.stage as write_module

            copy = write_module._copy_range

            def copy_then_die(*args):
                copy(*args)
                os._exit(1)

            write_module._copy_range = copy_then_die
        return super().process(work, unit, state, advance)


def test_a_ray_unit_whose_worker_dies_is_retried_to_the_same_output(tmp_path, ray_executor):
    from ray import cloudpickle

    from dedup.cluster.stage import run_cluster
    from dedup.core.stage import run_stage
    from dedup.embed.stage import run_embed
    from dedup.write.stage import run_write

    local, remote = _dataset(tmp_path / "local"), _dataset(tmp_path / "ray")
    for work in (local, remote):
        run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
        run_cluster(CLUSTER, work, progress=False)
    run_write(WriteConfig(samples_per_shard=7), local, progress=False)
    flags = tmp_path / "flags"
    flags.mkdir()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        summary = run_stage(
            _DiesOnceMidWrite(WriteConfig(samples_per_shard=7), flags), remote, ray_executor, False
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(list(flags.glob("attempt-1-*"))) == 2  # died once, retried once (another process)
    assert summary["written_shards"] == summary["output_shards"]
    a, b = _outputs(local), _outputs(remote)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    assert not list(remote.dedup_dir.glob(".*.tmp"))  # the dead attempt's partial file is gone


def test_without_ray_the_executor_says_what_to_install(monkeypatch):
    from dedup.core.errors import UserError
    from dedup.core.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(
        UserError, match=r"^--executor ray needs the 'ray' package: pip install 'dedup\[ray\]'$"
    ):
        make_executor("ray")


def test_dedup_run_with_executor_ray_from_a_config(tmp_path, cli, ray_executor):
    """The CLI drives the same stages on Ray, joining a running cluster by its address."""
    local, remote = _dataset(tmp_path / "local"), _dataset(tmp_path / "ray")
    _pipeline(local, None)
    address = ray.get_runtime_context().gcs_address
    config = tmp_path / "ray.yaml"
    config.write_text(
        f"workdir: {remote.root}\nexecutor: ray\nray: {{address: '{address}'}}\n"
        "embed: {embedder: descriptor}\ncluster: {search: ivf, nlist: 4, nprobe: 2, verify_unit_pairs: 8}\n"
        "write: {samples_per_shard: 7}\nstages: [embed, cluster, write]\n"
    )
    result = cli("run", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== embed (executor: ray)" in result.stdout
    a, b = _outputs(local), _outputs(remote)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    bad = cli("run", str(config), "--executor", "spark")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --executor spark: choose from local, ray"
    ], bad.stderr


def test_download_through_img2datasets_ray_distributor_matches_a_local_download(tmp_path, ray_executor):
    """Under --executor ray the download stage uses img2dataset's own ray distributor; the shards and
    their parquet hold the same samples as a multiprocessing download."""
    import polars as pl

    from dedup.core.config import DownloadConfig
    from dedup.core.shards import iter_samples
    from dedup.download.serve import serve_directory
    from dedup.download.stage import run_download

    site = tmp_path / "site"
    site.mkdir()
    for i in range(10):
        (site / f"{i}.jpg").write_bytes(encode(photo(i)))
    url_list = tmp_path / "urls.parquet"
    got = {}
    with serve_directory(site) as base:
        pl.DataFrame(
            {
                "URL": [f"{base}/{i}.jpg" for i in range(10)] + [f"{base}/gone.jpg"],
                "TEXT": [f"c{i}" for i in range(11)],
            }
        ).write_parquet(url_list)
        for distributor in ("multiprocessing", "ray"):
            work = WorkDir(tmp_path / distributor)
            cfg = DownloadConfig(
                url_list=str(url_list), samples_per_shard=4, threads=2, distributor=distributor
            )
            summary = run_download(cfg, work)
            members = {
                s.key: s.members
                for shard in work.download_shards()
                for s in iter_samples(work.download_tar(shard))
            }
            got[distributor] = (summary["successes"], summary["failed"], members)
    assert got["ray"][:2] == got["multiprocessing"][:2] == (10, 1)
    assert got["ray"][2].keys() == got["multiprocessing"][2].keys()
    assert all(got["ray"][2][k]["jpg"] == got["multiprocessing"][2][k]["jpg"] for k in got["ray"][2])
