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
from dedup.layout import AttackDir, GenerateFilterDir, WorkDir

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


def control_captions(top: pl.DataFrame, members: set[str], per_group: int, seed: int) -> pl.DataFrame:
    """The captions generate-and-filter is run on, each labelled with its population: the most
    duplicated groups, and as controls singletons the model *trained on* (members) and singletons it
    never saw (non-members, left out by the budget's subsampling). Mixing the two would make a
    singleton's flag rate a blend of memorization and chance."""
    dup = top.filter(pl.col("duplicate_count") > 1).head(per_group)
    single = top.filter(pl.col("duplicate_count") == 1)
    rng = np.random.default_rng(seed)
    parts = [dup.with_columns(pl.lit("duplicated").alias("population"))]
    for name, inside in (("singleton, member", True), ("singleton, non-member", False)):
        pool = single.filter(pl.col("representative_key").is_in(list(members)) == inside)
        pick = np.sort(rng.choice(pool.height, size=min(per_group, pool.height), replace=False)).tolist()
        parts.append(pool[pick].with_columns(pl.lit(name).alias("population")))
    return pl.concat(parts).with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias("rank"))


def flagging(work: WorkDir, seed: int, k: int = 24, per_group: int = 40) -> dict:
    """Generate-and-filter with the seed's before model: the most duplicated captions against
    singleton captions the model trained on and singletons it never saw."""
    paths = AttackDir(work.root / f"attack_seed{seed}")
    members = set(pl.read_parquet(paths.image_table("before"), columns=["key"])["key"].to_list())
    cands = control_captions(candidates(work, 10**9), members, per_group, seed)
    path = paths.root / "flag_candidates.parquet"
    cands.write_parquet(path)
    gen = DDPMGenerator(paths.model("before"), steps=20)
    t = time.time()
    out = paths.root / "generate_filter"
    s = run_generate_filter(path, gen, Settings(k=k, seed=seed), out, work.root, progress=False)
    s["wall_seconds"] = round(time.time() - t, 1)
    results = pl.read_parquet(GenerateFilterDir(out).results).join(
        cands.select("cluster_id", "population"), on="cluster_id"
    )
    s["by_population"] = {
        name: {
            "captions": part.height,
            "flagged": int(part["flagged"].sum()),
            "verified": int(part["verified"].sum()),
        }
        for (name,), part in results.group_by("population", maintain_order=True)
    }
    print(
        f"\n### generate-and-filter, seed {seed}: K={k}, m={s['settings']['m']}, tau={s['settings']['tau']}\n"
    )
    print("| captions | n | flagged | verified |")
    print("|---|---|---|---|")
    for name, v in s["by_population"].items():
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
