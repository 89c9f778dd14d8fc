"""The before/after memorization experiment on the demo corpus at the demo budget, for several seeds,
then generate-and-filter on the before model: do duplicated captions get flagged more than singletons?

Usage: python -m bench.attack [SEED ...]   (default seeds 0 1; about 15 minutes per seed on 2 cores)
Work directory: bench/out/demo (built by the demo pipeline's dedup stages if missing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from attack.compare import format_compare, run_compare
from attack.config import AttackConfig
from attack.extract import BUCKETS
from attack.generate_filter import Settings, candidates, run_generate_filter
from attack.generators import DDPMGenerator
from dedup.layout import AttackDir, WorkDir

ROOT = Path("bench/out/demo")


def ensure_workdir() -> WorkDir:
    work = WorkDir(ROOT)
    if not work.ledger.exists():
        from dedup.pipeline import run_demo

        run_demo(ROOT, stages=["download", "embed", "cluster", "write"])
    return work


def before_after(work: WorkDir, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        out = work.root / f"attack_seed{seed}"
        t = time.time()
        s = run_compare(work.root, work.root, out, AttackConfig(seed=seed), progress=False)
        s["wall_seconds"] = round(time.time() - t, 1)
        print(f"\n### seed {seed} ({s['wall_seconds']:.0f} s)\n")
        print(format_compare(s), flush=True)
        rows.append(s)
    names = [b[0] for b in BUCKETS]
    print("\n| seed | criterion | model | " + " | ".join(names) + " | total |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    for s in rows:
        for crit in s["before"]["by_criterion"]:
            for which in ("before", "after"):
                r = s[which]["by_criterion"][crit]
                print(
                    f"| {s['settings']['seed']} | {crit} | {which} | "
                    + " | ".join(str(r[n]) for n in names)
                    + f" | {r['total']} |"
                )
    print(
        "\n| seed | nearest is duplicated: before | after | duplicated images hit: before | after | wall s |"
    )
    print("|---|---|---|---|---|---|")
    for s in rows:
        b, a = s["before"]["continuous"], s["after"]["continuous"]
        hb = sum(b["images_hit_by_bucket"][n] for n in names[1:])
        ha = sum(a["images_hit_by_bucket"][n] for n in names[1:])
        print(
            f"| {s['settings']['seed']} | {b['share_nearest_duplicated']:.1%} "
            f"| {a['share_nearest_duplicated']:.1%} | {hb} | {ha} | {s['wall_seconds']:.0f} |"
        )
    return rows


def flagging(work: WorkDir, seed: int, k: int = 24, per_group: int = 40) -> dict:
    """Generate-and-filter with the seed's before model: the most duplicated captions against as many
    singleton captions (the control)."""
    paths = AttackDir(work.root / f"attack_seed{seed}")
    top = candidates(work, 10**9)
    dup = top.filter(pl.col("duplicate_count") > 1).head(per_group)
    single = top.filter(pl.col("duplicate_count") == 1)
    rng = np.random.default_rng(seed)
    single = single[
        np.sort(rng.choice(single.height, size=min(per_group, single.height), replace=False)).tolist()
    ]
    cands = pl.concat([dup, single]).with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias("rank"))
    path = paths.root / "flag_candidates.parquet"
    cands.write_parquet(path)
    gen = DDPMGenerator(paths.model("before"), steps=20)
    t = time.time()
    s = run_generate_filter(
        path, gen, Settings(k=k, seed=seed), paths.root / "generate_filter", work.root, progress=False
    )
    s["wall_seconds"] = round(time.time() - t, 1)
    print(
        f"\n### generate-and-filter, seed {seed}: K={k}, m={s['settings']['m']}, tau={s['settings']['tau']}\n"
    )
    print("| copies | captions | flagged | verified |")
    print("|---|---|---|---|")
    for name, v in s["by_bucket"].items():
        print(f"| {name} | {v['captions']} | {v['flagged']} | {v['verified']} |")
    return s


def main(argv: list[str]) -> None:
    seeds = [int(a) for a in argv] or [0, 1]
    work = ensure_workdir()
    rows = before_after(work, seeds)
    flags = flagging(work, seeds[0])
    (ROOT / "attack_results.json").write_text(
        json.dumps({"compare": rows, "generate_filter": flags}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
