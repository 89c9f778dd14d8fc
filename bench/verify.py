"""The copy verifier's cascade, measured: margins of each tier on the hard-negative benchmark, and where
a pair's time goes on the scaling set.

``python -m bench.verify margins``: every pair the default cluster run verifies on the hard-negative
benchmark (bench/copydetect.py), examined twice, by the full verifier (``S.CASCADE`` off: every
alignment refined and compared at full size) and by the cascade; prints how many pairs each tier
decided, the verdicts that differ (the goal: none), the lowest small-size match of an alignment the
full verifier found copy or derived (the margin above ``COARSE_FLOOR``), how many other alignments
that floor stops, and the time per pair of each.

``python -m bench.verify plan [N] [K]``: the verify step's plan on the scaling set of N images
(10,000 by default), and K of its pairs (400) examined one by one: pairs and ms a pair per tier.

``python -m bench.verify profile [N]``: cProfile of ``copydetect.examine`` on 150 pairs of the scaling
set of N images (bench/scaling.py, 1,000 by default) whose verdict was ``distinct``, with and without
the cascade: the profile bench/RESULTS.md quoted before the cascade (96 ms a pair).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster import copydetect, geometry, pixels
from dedup.cluster import verifier_settings as S


def verified_pairs(work_root: Path) -> tuple[list[tuple[str, str, bool, bool]], dict[str, bytes]]:
    """(key_a, key_b, stretch_first, window_search) of each pair the last cluster run verified, and the
    bytes of every image involved."""
    from dedup.cluster.oracle import STRETCH_COSINE, STRETCH_PHASH
    from dedup.core.layout import WorkDir
    from dedup.core.shards import input_samples

    work = WorkDir(work_root)
    pairs = pl.read_parquet(work.pairs).filter(pl.col("verdict").is_not_null())
    keys = set(pairs["key_a"]) | set(pairs["key_b"])
    images: dict[str, bytes] = {}
    for shard in work.download_shards():
        for sample in input_samples(work.input_tar(shard)):
            if sample.key in keys and sample.image is not None:
                images[sample.key] = sample.image
    out = []
    for r in pairs.iter_rows(named=True):
        same_frame = r["phash_distance"] is not None and r["phash_distance"] <= STRETCH_PHASH
        out.append((r["key_a"], r["key_b"], same_frame, same_frame or r["similarity"] >= STRETCH_COSINE))
    return out, images


def examine_all(
    pairs: list[tuple[str, str, bool, bool]], images: dict[str, bytes], cascade: bool
) -> tuple[list[copydetect.Evidence], float]:
    S.CASCADE = cascade
    verifier = copydetect.CopyVerifier()
    ids = {k: t for t, k in enumerate(sorted(images))}
    verifier.add_images((ids[k], v) for k, v in images.items())
    for k in ids.values():  # decoding and keypoints are per image, not per pair: outside the timing
        p = verifier.prepared(k)
        if p is not None:
            verifier._features.compute(p)
            verifier._features.compute(geometry.mirror_of(p))
    started = time.perf_counter()
    out = [verifier.examine(ids[a], ids[b], s, w) for a, b, s, w in pairs]
    S.CASCADE = True
    return out, time.perf_counter() - started


def small_matches(
    pairs: list[tuple[str, str, bool, bool]], images: dict[str, bytes]
) -> list[tuple[float, float, float]]:
    """(coverage, full pixel match, small pixel match) of every alignment the full verifier compares:
    the small comparison (COARSE_SIDE) is what the cascade's "coarse" tier judges."""
    full_compare = copydetect.compare
    seen: list[tuple[float, float, float]] = []

    def traced(a: geometry.Prepared, b: geometry.Prepared, m: np.ndarray) -> pixels.Match:
        out = full_compare(a, b, m)
        side = S.COMPARE_SIDE
        S.COMPARE_SIDE = S.COARSE_SIDE
        try:
            small = full_compare(a, b, m)
        finally:
            S.COMPARE_SIDE = side
        seen.append((out.coverage, out.pixel_match, small.pixel_match))
        return out

    copydetect.compare = traced
    try:
        examine_all(pairs, images, cascade=False)
    finally:
        copydetect.compare = full_compare
    return seen


def margins(root: Path) -> dict[str, Any]:
    from bench.copydetect import prepare_workdir
    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig
    from dedup.core.layout import WorkDir

    workdir, _ = prepare_workdir(root)
    run_cluster(ClusterConfig(), WorkDir(workdir), progress=False)
    pairs, images = verified_pairs(workdir)
    full, t_full = examine_all(pairs, images, cascade=False)
    fast, t_fast = examine_all(pairs, images, cascade=True)
    tiers: dict[str, int] = {}
    for e in fast:
        tiers[e.tier] = tiers.get(e.tier, 0) + 1
    changed = [
        (p[0], p[1], f.verdict, c.verdict, round(f.pixel_match, 3))
        for p, f, c in zip(pairs, full, fast, strict=True)
        if f.verdict != c.verdict
    ]
    seen = np.array(small_matches(pairs, images)).reshape(-1, 3)
    covered = seen[:, 0] >= S.MIN_COVERAGE
    kept = covered & (seen[:, 1] >= S.DERIVED_MATCH)  # alignments that end copy or derived
    others = covered & ~kept
    floor = S.COARSE_FLOOR
    result = {
        "pairs": len(pairs),
        "cascade tiers (pairs)": dict(sorted(tiers.items())),
        "verdicts that differ from the full verifier's": changed or "none",
        "covered alignments": int(covered.sum()),
        "lowest small match of an alignment that ended copy or derived": round(float(seen[kept, 2].min()), 4)
        if kept.any()
        else None,
        "coarse floor": floor,
        "covered alignments of other photographs stopped by it": f"{int((seen[others, 2] < floor).sum())} "
        f"of {int(others.sum())}",
        "ms a pair, full verifier": round(1000 * t_full / max(1, len(pairs)), 1),
        "ms a pair, cascade": round(1000 * t_fast / max(1, len(pairs)), 1),
    }
    for name, value in result.items():
        print(f"{name}: {value}")
    return result


def profile(n: int) -> None:
    from bench.scaling import OUT, build
    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig, EmbedConfig
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import run_import
    from dedup.embed.stage import run_embed

    work = WorkDir(OUT / "profile" / str(n))
    if not work.embed_summary.exists():
        run_import(build(n), work)
        run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    pairs, images = verified_pairs(work.root)
    verdicts = pl.read_parquet(work.pairs).filter(pl.col("verdict").is_not_null())["verdict"].to_list()
    distinct = [p for p, v in zip(pairs, verdicts, strict=True) if v == "distinct"]
    sample = [distinct[t] for t in np.random.default_rng(0).permutation(len(distinct))[:150]]
    for cascade in (False, True):
        prof = cProfile.Profile()
        prof.enable()
        evidence, seconds = examine_all(sample, images, cascade)
        prof.disable()
        tiers: dict[str, int] = {}
        for e in evidence:
            tiers[e.tier] = tiers.get(e.tier, 0) + 1
        label = "cascade" if cascade else "full verifier"
        print(
            f"\n{label}: {len(sample)} distinct pairs, {1000 * seconds / len(sample):.1f} ms a pair; {tiers}"
        )
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(18)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:4000])


class _PlanWritten(Exception):
    """Raised in place of the verify step: the plan is on disk, nothing verified."""


def plan_sample(n: int, k: int = 400) -> None:
    """Where the verify step's time would go on the scaling set of ``n`` images, without running it:
    the cluster stage up to the plan (cluster/verify/plan.parquet), then ``k`` of its pairs drawn
    uniformly, examined one at a time on one thread. Per tier: pairs and ms a pair; decoding and
    keypoints (per image, once) timed apart. The plan's pair count times the mean is the verify
    step's thread time before the implied-pair skip (an upper bound)."""
    from bench.scaling import OUT, build
    from dedup.cluster import stage as cluster_stage
    from dedup.cluster.verify import _images
    from dedup.core.config import ClusterConfig, EmbedConfig
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import run_import
    from dedup.embed.stage import run_embed

    work = WorkDir(OUT / "profile" / str(n))
    if not work.embed_summary.exists():
        run_import(build(n), work)
        run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    if not work.verify_plan.exists():

        def stop(*_: Any, **__: Any) -> None:
            raise _PlanWritten

        real, cluster_stage._run_verify = cluster_stage._run_verify, stop
        try:
            cluster_stage.run_cluster(ClusterConfig(), work, progress=False, force=True)
        except _PlanWritten:
            pass
        finally:
            cluster_stage._run_verify = real
    table = pl.read_parquet(work.verify_plan)
    pick = np.sort(np.random.default_rng(0).permutation(table.height)[:k])
    sample = table[pick]
    verifier = copydetect.CopyVerifier()
    verifier.add_images(_images(work, sample))
    started = time.perf_counter()
    for row in sorted(set(sample["a"].to_list()) | set(sample["b"].to_list())):
        p = verifier.prepared(row)
        if p is not None:
            verifier._features.compute(p)
            verifier._features.compute(geometry.mirror_of(p))
    prep = time.perf_counter() - started
    tiers: dict[str, list[float]] = {}
    for a, b, s, w in sample.select("a", "b", "stretch_first", "window_search").iter_rows():
        t = time.perf_counter()
        e = verifier.examine(a, b, s, w)
        spent = tiers.setdefault(e.tier, [0, 0.0])
        spent[0] += 1
        spent[1] += time.perf_counter() - t
    total = sum(v[1] for v in tiers.values())
    images = len(set(sample["a"].to_list()) | set(sample["b"].to_list()))
    chunks = table["chunk"].n_unique()
    print(f"plan: {table.height} pairs, {chunks} chunks; sample {len(sample)} pairs, {images} images")
    print(f"prepare (decode, keypoints both ways): {1000 * prep / images:.1f} ms an image")
    mean = total / len(sample)
    print(f"examine: {1000 * mean:.1f} ms a pair; plan x mean = {table.height * mean:.0f} s of thread time")
    for tier, (count, secs) in sorted(tiers.items()):
        print(f"  {tier:12s} {int(count):5d} pairs  {1000 * secs / count:7.1f} ms a pair  {secs:7.1f} s")


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "margins"
    if what == "margins":
        margins(Path(argv[1]) if len(argv) > 1 else Path("bench/out/copydetect"))
    elif what == "profile":
        profile(int(argv[1]) if len(argv) > 1 else 1000)
    elif what == "plan":
        plan_sample(int(argv[1]) if len(argv) > 1 else 10_000, int(argv[2]) if len(argv) > 2 else 400)
    else:
        raise SystemExit(f"python -m bench.verify [margins|profile N]: unknown {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
