"""Write-stage throughput against plain copies of the same shards.

A synthetic work directory: 8 shards x 1,500 samples of ~64 KB (incompressible image payload + txt +
json), with the cluster stage's outputs made by hand. Baselines: ``shutil.copyfile`` of every tar
(raw bytes) and a member-by-member ``tarfile`` copy (what re-packing a WebDataset costs in Python).
The write stage is timed keeping everything (the same bytes as the copies) and keeping 70%.
Usage: python -m bench.write
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from dedup.core.config import WriteConfig
from dedup.core.files import write_json
from dedup.core.layout import WorkDir
from dedup.write.stage import run_write
from dedup.write.tar_index import index_tar

SHARDS, PER_SHARD, PAYLOAD = 8, 1500, 64_000


def build(root: Path) -> WorkDir:
    work = WorkDir(root)
    work.download_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    metas = []
    for s in range(SHARDS):
        rows = []
        with tarfile.open(work.download_tar(s), "w") as tar:
            for i in range(PER_SHARD):
                key = f"{s:05d}{i:04d}"
                meta = {"key": key, "url": f"http://x/{key}.jpg", "caption": f"c {key}", "status": "success"}
                rows.append(meta)
                for ext, data in (
                    ("jpg", rng.bytes(PAYLOAD)),
                    ("txt", meta["caption"].encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pl.DataFrame(rows).write_parquet(work.download_parquet(s))
        write_json(
            work.download_stats(s),
            {"count": PER_SHARD, "successes": PER_SHARD, "start_time": 0, "end_time": 1, "duration": 1},
        )
        work.metadata(s).parent.mkdir(parents=True, exist_ok=True)
        # what the embed stage records: each sample's status and where it sits in the tar
        spans = index_tar(work.download_tar(s), s)
        pl.DataFrame(
            {
                "key": [r["key"] for r in rows],
                "status": ["ok"] * PER_SHARD,
                "tar_start": [sp.start for sp in spans],
                "tar_end": [sp.end for sp in spans],
            }
        ).write_parquet(work.metadata(s))
        metas += [r["key"] for r in rows]
    return work, metas


def clusters(work: WorkDir, keys: list[str], keep: float) -> None:
    n = len(keys)
    rep = [k if (i % 100) < keep * 100 else keys[i - i % 100] for i, k in enumerate(keys)]
    df = (
        pl.DataFrame({"key": keys, "representative_key": rep})
        .with_columns(
            (pl.col("key") == pl.col("representative_key")).alias("is_representative"),
            pl.col("representative_key").rank("dense").cast(pl.Int64).alias("cluster_id"),
            pl.lit(1.0, dtype=pl.Float32).alias("similarity_to_representative"),
            pl.lit("embedding").alias("signal"),
            pl.lit(None, dtype=pl.String).alias("reference_key"),
            pl.lit(None, dtype=pl.Float32).alias("reference_similarity"),
        )
        .with_columns(pl.len().over("cluster_id").cast(pl.Int64).alias("cluster_size"))
    )
    work.cluster_dir.mkdir(parents=True, exist_ok=True)
    df.write_parquet(work.clusters)
    assert df.height == n


def drop_caches(paths: list[Path]) -> None:
    for p in paths:  # best effort: keep timings comparable by syncing, not by cold cache
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _best(fn, repeats: int = 3) -> float:
    """Fastest of a few runs: disk flushes make single timings noisy."""
    times = []
    for _ in range(repeats):
        t = time.time()
        fn()
        times.append(time.time() - t)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work, keys = build(Path(tmp) / "w")
        tars = [work.download_tar(s) for s in range(SHARDS)]
        total = sum(t.stat().st_size for t in tars)
        rows = []

        def raw_copy() -> None:
            out = Path(tmp) / "copy"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for p in tars:
                shutil.copyfile(p, out / p.name)
                with open(out / p.name, "rb") as f:
                    os.fsync(f.fileno())

        def tar_copy() -> None:
            out = Path(tmp) / "tarcopy"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for p in tars:
                with tarfile.open(p) as src, tarfile.open(out / p.name, "w") as dst:
                    for m in src:
                        dst.addfile(m, src.extractfile(m))
                with open(out / p.name, "rb") as f:
                    os.fsync(f.fileno())

        rows.append(("cp: shutil.copyfile of the tars", _best(raw_copy)))
        rows.append(("tarfile member-by-member copy", _best(tar_copy)))
        for keep in (1.0, 0.7):
            clusters(work, keys, keep)

            def write(keep: float = keep) -> None:
                shutil.rmtree(work.dedup_dir, ignore_errors=True)
                shutil.rmtree(work.manifest_dir, ignore_errors=True)
                s = run_write(WriteConfig(samples_per_shard=PER_SHARD), work, progress=False)
                assert s["kept"] == round(keep * len(keys))

            rows.append((f"dedup write, keeping {keep:.0%}", _best(write)))

        print(
            f"\n{SHARDS} shards, {len(keys)} samples, {total / 1e6:.0f} MB of input; "
            "best of 3 runs, fsync included\n"
        )
        print("| method | input MB/s | ratio to cp | ratio to tarfile copy |")
        print("|---|---|---|---|")
        raw, tarc = total / rows[0][1], total / rows[1][1]
        for name, secs in rows:
            rate = total / secs
            print(f"| {name} | {rate / 1e6:.0f} | {rate / raw:.2f} | {rate / tarc:.2f} |")


if __name__ == "__main__":
    main()
