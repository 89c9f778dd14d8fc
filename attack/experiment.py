"""The memorization measurement as a controlled experiment (#13; attack.md §4, and §5 beyond the paper).

Arms, all with the same architecture, resolution, batch size, initial weights (per replicate),
prompts and sampling seed:

- ``before``: the data as downloaded;
- ``after``: the deduplicated data, the same optimizer steps (the paper's protocol, attack.md §4);
- ``after_equal_passes``: the deduplicated data, steps scaled by |after| / |before|, so each image is
  seen about as often as in ``before`` (at equal steps a much smaller set is seen many more times,
  which confounds deduplication with exposure);
- ``random_removal``: as many images removed as dedup removed, at random, the same steps as
  ``after`` (does dedup lower memorization beyond what any removal of that size does?).

Replicates: seed s sets both the data seed (which singletons the budget trains on, which images are
held out for membership inference, which images random removal drops) and the training seed (initial
weights, batches, noise); the arms of one replicate share them, so differences are paired. Per duplicate
bucket and criterion the report gives the mean paired difference ``before - arm`` with a bootstrap
95 % interval over replicates; an interval that excludes 0 is called significant, nothing else is.

Each (replicate, arm) run is kept on disk with the key of everything it depends on
(``ExperimentDir.result``); a rerun skips finished runs and resumes a killed training from its
checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from attack.compare import prompts_for, train_config
from attack.config import AttackConfig, resolve_attack
from attack.data import AttackSets, ImageSet, attack_sets
from attack.extract import BUCKETS, extract
from attack.membership import FPR, T, auc, loss_scores, roc, tpr_at_fpr
from attack.sample import load_generations, sample_to_file
from attack.train import data_digest, train
from dedup.core.layout import ExperimentDir, atomic_path, read_json, write_json
from dedup.core.markers import config_hash

ARMS = ("before", "after", "after_equal_passes", "random_removal")
QUESTIONS = {
    "after": "does deduplication lower memorization at the same training steps (the paper's protocol)?",
    "after_equal_passes": "does it, when each image is seen as often as before (steps scaled to the set)?",
    "random_removal": "does removing as many images at random lower it as much (the control)?",
}
CRITERIA = ("calibrated<=1/3", "calibrated<=0.5", "calibrated<=1.0", "l2<=0.15")
BOOTSTRAP = 10_000
HOLDOUT = 200  # singletons no arm trains on: membership inference's non-members (setting)


def arm_steps(arm: str, steps: int, n_before: int, n_after: int) -> int:
    """Optimizer steps of an arm: equal passes scales by the set sizes; every other arm keeps ``steps``."""
    if arm == "after_equal_passes":
        return max(1, round(steps * n_after / max(1, n_before)))
    return steps


def arm_training_set(arm: str, sets: AttackSets, seed: int) -> ImageSet:
    """What an arm trains on. Random removal drops |before| - |after| samples of the before set, chosen
    with the replicate's seed (all copies of an image may go, as a random deletion would)."""
    if arm == "before":
        return sets.before
    if arm in ("after", "after_equal_passes"):
        return sets.after
    if arm == "random_removal":
        n_drop = len(sets.before) - len(sets.after)
        rng = np.random.default_rng([seed, 7])
        keep = np.sort(rng.choice(len(sets.before), size=len(sets.before) - n_drop, replace=False))
        return sets.before.subset([sets.before.keys[i] for i in keep])
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def members_of(training: ImageSet, sets: AttackSets) -> np.ndarray:
    """Per reference image: did this arm train on some copy of it?"""
    out = np.zeros(len(sets.reference), dtype=bool)
    for key in training.keys:
        if key in sets.group_of:
            out[sets.group_of[key]] = True
    return out


def bootstrap_ci(values: list[float], rounds: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of the mean over replicates (None with fewer than two)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(rounds, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def run_arm(
    paths: ExperimentDir,
    seed: int,
    arm: str,
    sets: AttackSets,
    cfg: AttackConfig,
    progress: bool,
) -> dict[str, Any]:
    """Train (or resume), sample, extract and score membership for one arm of one replicate."""
    training = arm_training_set(arm, sets, seed)
    steps = arm_steps(arm, cfg.steps, len(sets.before), len(sets.after))
    tcfg = replace(train_config(cfg), seed=seed, steps=steps, checkpoint_every=max(100, steps // 10))
    key = config_hash(
        {
            "config": cfg.model_dump(mode="json"),
            "arm": arm,
            "seed": seed,
            "steps": steps,
            "data": data_digest(training.images, training.captions),
            "reference": sets.reference.keys,
            "held_out": sets.held_out.keys if sets.held_out is not None else [],
        }
    )
    result_path = paths.result(seed, arm)
    if result_path.exists() and read_json(result_path).get("key") == key:
        return read_json(result_path)
    run = paths.replicate(seed)
    if progress:
        typer.echo(f"   seed {seed}, {arm}: {len(training)} images, {steps} steps")
    started = time.time()
    trained = train(training.images, training.captions, tcfg, run.model(arm), progress=progress)
    prompts = prompts_for(sets, cfg)
    sample_to_file(
        run.model(arm),
        run.generations(arm),
        cfg.samples,
        prompts,
        cfg.sample_steps,
        cfg.guidance,
        seed=10_000 + seed,  # the same sampling seed for every arm of a replicate
        device=cfg.device,
        progress=progress,
    )
    images, used = load_generations(run.generations(arm))
    ex = extract(images, used, sets.reference.images, sets.reference.keys, sets.k, cfg.calibrated_threshold)
    with atomic_path(run.image_table(arm)) as tmp:
        ex.images.write_parquet(tmp)
    counts = ex.counts()
    member = members_of(training, sets)
    scores = loss_scores(
        run.model(arm), sets.reference.images, sets.reference.captions, seed=seed, device=cfg.device
    )
    held = (
        loss_scores(
            run.model(arm), sets.held_out.images, sets.held_out.captions, seed=seed, device=cfg.device
        )
        if sets.held_out is not None and len(sets.held_out)
        else np.zeros(0)
    )
    membership = {}
    for name, lo, hi in BUCKETS:
        inside = member & (sets.k >= lo) & (sets.k <= hi)
        membership[name] = {
            "members": int(inside.sum()),
            "auc": auc(scores[inside], held),
            f"tpr_at_{FPR:g}_fpr": tpr_at_fpr(scores[inside], held),
        }
    membership["all"] = {
        "members": int(member.sum()),
        "auc": auc(scores[member], held),
        f"tpr_at_{FPR:g}_fpr": tpr_at_fpr(scores[member], held),
    }
    result = {
        "key": key,
        "seed": seed,
        "arm": arm,
        "training_images": len(training),
        "steps": steps,
        "passes_per_image": round(steps * cfg.batch_size / max(1, len(training)), 2),
        "final_loss": trained.get("final_loss"),
        "extracted": counts["by_criterion"],
        "continuous": counts["continuous"],
        "membership": membership,
        "non_members": len(held),
        "scores": {
            "members": scores[member].tolist(),
            "non_members": held.tolist(),
            "k": sets.k[member].tolist(),
        },
        "seconds": round(time.time() - started, 1),
    }
    write_json(result_path, result)
    return result


def run_experiment(
    before: Path,
    after: Path,
    out: Path,
    cfg: AttackConfig,
    seeds: list[int],
    arms: tuple[str, ...] = ARMS,
    clusters: Path | None = None,
    holdout: int = HOLDOUT,
    progress: bool = True,
) -> dict[str, Any]:
    """Every arm for every replicate (resumable), then the paired differences and their intervals."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "before" not in arms:
        raise ValueError(
            f"arms must include 'before' and come from {', '.join(ARMS)} (got {', '.join(arms)})"
        )
    cfg = resolve_attack(cfg)
    paths = ExperimentDir(out)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    notes = set()
    for seed in seeds:
        sets = attack_sets(before, after, cfg.resolution, clusters, cfg.max_distinct, seed, holdout)
        if sets.note:
            notes.add(sets.note)
        results[seed] = {arm: run_arm(paths, seed, arm, sets, cfg, progress) for arm in arms}
    summary = summarize(results, arms, cfg)
    summary["notes"] = sorted(notes)
    write_json(paths.summary, summary)
    with atomic_path(paths.table) as tmp:
        tmp.write_text(format_experiment(summary), encoding="utf-8")
    return summary


def summarize(
    results: dict[int, dict[str, dict[str, Any]]], arms: tuple[str, ...], cfg: AttackConfig
) -> dict:
    """Per arm: the mean paired difference before - arm per bucket and criterion with its interval,
    and the membership AUC / TPR per bucket (mean and interval over replicates)."""
    seeds = sorted(results)
    buckets = [b[0] for b in BUCKETS] + ["total"]
    out: dict[str, Any] = {
        "replicates": seeds,
        "arms": {a: {"question": QUESTIONS.get(a, "the reference: the data as downloaded")} for a in arms},
        "settings": {
            **cfg.model_dump(mode="json"),
            "membership": f"loss at t={T} of 1000, mean of 8 noise draws; held-out singletons as non-members",
            "interval": f"bootstrap 95 % over replicates ({BOOTSTRAP} resamples of the paired differences)",
        },
    }
    for arm in arms:
        entry = out["arms"][arm]
        entry["training_images"] = [results[s][arm]["training_images"] for s in seeds]
        entry["steps"] = [results[s][arm]["steps"] for s in seeds]
        entry["extracted_mean"] = {
            c: {b: float(np.mean([results[s][arm]["extracted"][c][b] for s in seeds])) for b in buckets}
            for c in CRITERIA
        }
        if arm != "before":
            entry["difference"] = {}
            for c in CRITERIA:
                entry["difference"][c] = {}
                for b in buckets:
                    d = [
                        results[s]["before"]["extracted"][c][b] - results[s][arm]["extracted"][c][b]
                        for s in seeds
                    ]
                    ci = bootstrap_ci(d)
                    entry["difference"][c][b] = {
                        "mean": float(np.mean(d)),
                        "ci95": ci,
                        "significant": ci is not None and (ci[0] > 0 or ci[1] < 0),
                    }
        entry["membership"] = {}
        for b in [*(x[0] for x in BUCKETS), "all"]:
            aucs = [results[s][arm]["membership"][b]["auc"] for s in seeds]
            tprs = [results[s][arm]["membership"][b][f"tpr_at_{FPR:g}_fpr"] for s in seeds]
            aucs_ok = [a for a in aucs if a is not None]
            tprs_ok = [t for t in tprs if t is not None]
            entry["membership"][b] = {
                "auc_mean": float(np.mean(aucs_ok)) if aucs_ok else None,
                "auc_ci95": bootstrap_ci(aucs_ok),
                "tpr_at_1pct_fpr_mean": float(np.mean(tprs_ok)) if tprs_ok else None,
                "tpr_ci95": bootstrap_ci(tprs_ok),
            }
    return out


def roc_curves(paths: ExperimentDir, seeds: list[int], arms: tuple[str, ...]) -> dict[str, tuple]:
    """Pooled ROC per arm over replicates (the report's membership-inference curves)."""
    curves = {}
    for arm in arms:
        m, n = [], []
        for s in seeds:
            if paths.result(s, arm).exists():
                r = read_json(paths.result(s, arm))
                m += r["scores"]["members"]
                n += r["scores"]["non_members"]
        if m and n:
            curves[arm] = roc(np.array(m), np.array(n))
    return curves


def _ci(ci: list[float] | tuple[float, float] | None) -> str:
    return "n/a (one replicate)" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def format_experiment(s: dict[str, Any]) -> str:
    buckets = [b[0] for b in BUCKETS] + ["total"]
    lines = [
        f"Replicates (seeds): {', '.join(map(str, s['replicates']))}. "
        "Extraction: unique training images, by copies in the before set. "
        "Differences are before - arm, paired by replicate; [95 % bootstrap interval]; "
        "* = the interval excludes 0.",
        "",
    ]
    for arm, entry in s["arms"].items():
        lines.append(f"### {arm}: {entry['question']}")
        lines.append(f"training images {entry['training_images']}, steps {entry['steps']}")
        lines.append("")
        if arm == "before":
            lines.append("| criterion | " + " | ".join(buckets) + " |")
            lines.append("|---|" + "---|" * len(buckets))
            for c, row in entry["extracted_mean"].items():
                lines.append(f"| {c} | " + " | ".join(f"{row[b]:.1f}" for b in buckets) + " |")
        else:
            lines.append("| criterion | " + " | ".join(buckets) + " |")
            lines.append("|---|" + "---|" * len(buckets))
            for c, row in entry["difference"].items():
                cells = [
                    f"{row[b]['mean']:+.1f} {_ci(row[b]['ci95'])}{' *' if row[b]['significant'] else ''}"
                    for b in buckets
                ]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("| membership (t=100) | " + " | ".join([b[0] for b in BUCKETS] + ["all"]) + " |")
        lines.append("|---|" + "---|" * (len(BUCKETS) + 1))
        mem = entry["membership"]
        keys = [b[0] for b in BUCKETS] + ["all"]
        lines.append(
            "| AUC | "
            + " | ".join(
                "-" if mem[b]["auc_mean"] is None else f"{mem[b]['auc_mean']:.3f} {_ci(mem[b]['auc_ci95'])}"
                for b in keys
            )
            + " |"
        )
        lines.append(
            "| TPR at 1 % FPR | "
            + " | ".join(
                "-"
                if mem[b]["tpr_at_1pct_fpr_mean"] is None
                else f"{mem[b]['tpr_at_1pct_fpr_mean']:.3f} {_ci(mem[b]['tpr_ci95'])}"
                for b in keys
            )
            + " |"
        )
        lines.append("")
    if s.get("notes"):
        lines.append("Notes: " + "; ".join(s["notes"]))
    return "\n".join(lines) + "\n"
