"""Dedup quality on the demo corpus (real photos, planted copies, look-alikes): what each signal and
policy buys. Runs the cluster stage with several settings on one embedded demo work directory and
scores each against the planted truth. Usage: python -m bench.quality [WORKDIR]
(WORKDIR defaults to bench/out/demo, built with `dedup demo` stages download+embed if missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dedup.cluster.evaluate import run_evaluate
from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig
from dedup.core.layout import WorkDir

SETTINGS = [
    ("pHash <= 10, connected components", dict(signals=["phash"], verify="none", grouping="components")),
    (
        "thumbnail cosine >= 0.97, components",
        dict(signals=["embedding"], verify="none", grouping="components"),
    ),
    (
        "thumbnail cosine >= 0.90, components",
        dict(signals=["embedding"], embedding_threshold=0.9, verify="none", grouping="components"),
    ),
    ("exact + pHash + cosine, components", dict(verify="none", grouping="components")),
    ("exact + pHash + cosine, representative", dict(verify="none")),
    ("+ verification of unproposed candidates only (confirm off)", dict(confirm=False)),
    ("+ every proposed pair verified, representative (default)", dict()),
    ("+ every proposed pair verified, components", dict(grouping="components")),
]


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path("bench/out/demo")
    work = WorkDir(root)
    if not work.embed_summary.exists():
        from dedup.pipeline import run_demo

        run_demo(root, stages=["download", "embed"])
    print(
        "| setting | pair precision | pair recall | removal precision | removal recall | removed | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, opts in SETTINGS:
        s = run_cluster(ClusterConfig(**opts), work, progress=False)
        r = run_evaluate(work, work.demo_ground_truth)
        pw, rm = r["pairwise"], r["removals"]
        print(
            f"| {name} | {pw['precision']:.3f} | {pw['recall']:.3f} | {rm['precision']:.3f} "
            f"| {rm['recall']:.3f} | {rm['removed']} | {s['seconds']:.1f} |",
            flush=True,
        )
    run_cluster(ClusterConfig(), work, progress=False)  # leave the default result in place


if __name__ == "__main__":
    main(sys.argv[1:])
