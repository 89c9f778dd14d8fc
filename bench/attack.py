"""The memorization experiment on the demo corpus at the demo budget: every arm (attack/experiment.py)
over several replicates, then generate-and-filter on replicate 0's before model (do duplicated
captions get flagged more than singletons the model trained on, and than singletons it never saw?).

Usage: python -m bench.attack [--seeds N] [--corpus tiles|photos] [--arms a,b] [--no-flagging]
       python -m bench.attack --tables [--corpus ...]   (no training: the tables of the stored runs)
(default 5 seeds, the tiles corpus, every arm; about 11 minutes per replicate on 2 cores with
nothing beside it: five trainings of 1-2.5 minutes each plus sampling and scoring). Work
directory: bench/out/demo for the demo's tiles,
bench/out/photos for whole photographs (#13 item 5: distinctive at 16 px, deduplication removes
a minority); either is built by the demo pipeline's dedup stages if missing. Every finished run is
kept under WORKDIR/experiment: stop it at any time and rerun the same command to resume;
WORKDIR/experiment/summary.md is rewritten after each replicate.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from attack.config import ARMS, AttackConfig
from attack.experiment import analyse_stored, format_experiment, run_experiment
from attack.generate_filter import Settings, candidates, run_generate_filter
from attack.generators import DDPMGenerator
from attack.layout import ExperimentDir, GenerateFilterDir
from dedup.core.layout import WorkDir

ROOTS = {"tiles": Path("bench/out/demo"), "photos": Path("bench/out/photos")}
# Every finished run's result.json (counts, per-image scores, null counts: no images, no weights),
# kept in the repository as it comes, so the tables regenerate from a clone alone.
FIGURES = Path("bench/figures")
RUNS = {"tiles": Path("bench/runs/attack/tiles"), "photos": Path("bench/runs/attack/photos")}
# Non-members for membership inference: singletons no arm trains on. The photos corpus has ~75
# singletons in all, so it sets fewer apart.
HOLDOUTS = {"tiles": 200, "photos": 15}


def ensure_workdir(corpus: str) -> WorkDir:
    root = ROOTS[corpus]
    work = WorkDir(root)
    if not work.ledger.exists():
        from dedup.core.config import DemoConfig
        from dedup.pipeline import demo_config, run_demo

        cfg = demo_config()
        cfg.demo = DemoConfig(kind=corpus)
        run_demo(root, cfg, stages=["download", "embed", "cluster", "write"])
    return work


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
    paths = ExperimentDir(work.root / "experiment").replicate(seed)
    members = set(pl.read_parquet(paths.image_table("before"), columns=["key"])["key"].to_list())
    cands = control_captions(candidates(work, 10**9), members, per_group, seed)
    path = paths.root / "flag_candidates.parquet"  # beside the replicate's arms
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


def keep_results(out: Path, runs: Path) -> None:
    """Copy every finished run's result.json beside the code (bench/runs/...), same layout."""
    for path in sorted(out.glob("seed[0-9][0-9][0-9]/*/result.json")):
        target = runs / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def restore_results(runs: Path, out: Path) -> None:
    """Put the committed runs back where the experiment looks for them, so a new machine resumes
    after the last finished replicate instead of retraining it (a run is reused only when its stored
    key, which holds the data, settings and code digest, matches what this code would compute)."""
    for path in sorted(runs.glob("seed[0-9][0-9][0-9]/*/result.json")):
        target = out / path.relative_to(runs)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def experiment(
    work: WorkDir,
    seeds: int,
    arms: tuple[str, ...] = ARMS,
    holdout: int = HOLDOUTS["tiles"],
    runs: Path | None = None,
) -> dict:
    """The arms over replicates 0..seeds-1, one replicate at a time: summary.md grows as they finish,
    and each finished run's result.json is copied to ``runs``."""
    out = work.root / "experiment"
    if runs is not None:
        restore_results(runs, out)
    summary: dict = {}
    for n in range(1, seeds + 1):
        t = time.time()
        summary = run_experiment(
            work.root, work.root, out, AttackConfig(), list(range(n)), arms, holdout=holdout, progress=False
        )
        if runs is not None:
            keep_results(out, runs)
        print(f"\n## after {n} replicate(s) ({time.time() - t:.0f} s this round)\n", flush=True)
        print(format_experiment(summary), flush=True)
    return summary


def _option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def tables(runs: Path, arms: tuple[str, ...]) -> str:
    """bench/RESULTS.md's attack tables, regenerated from the stored runs alone (byte-identical for
    the same runs: every number comes from result.json files and seeded computations)."""
    summary = analyse_stored(runs, AttackConfig(), arms)
    if summary is None:
        return f"no finished replicate under {runs}: run `python -m bench.attack` first\n"
    from attack.report import plot_dose

    FIGURES.mkdir(parents=True, exist_ok=True)
    plot_dose(summary, FIGURES)  # bench/figures/dose_response.png, the report's figure of the same runs
    return format_experiment(summary)


def main(argv: list[str]) -> None:
    seeds = int(_option(argv, "--seeds", "5"))
    corpus = _option(argv, "--corpus", "tiles")
    arms = tuple(_option(argv, "--arms", ",".join(ARMS)).split(","))
    if corpus not in ROOTS:
        sys.exit(f"--corpus: one of {', '.join(ROOTS)} (got {corpus!r})")
    if "--tables" in argv:
        sys.stdout.write(tables(RUNS[corpus], arms))
        return
    work = ensure_workdir(corpus)
    summary = experiment(work, seeds, arms, HOLDOUTS[corpus], RUNS[corpus])
    flags = None if "--no-flagging" in argv else flagging(work, 0)
    (work.root / "attack_results.json").write_text(
        json.dumps({"experiment": summary, "generate_filter": flags}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
