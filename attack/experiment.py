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
weights, batches, noise); the arms of one replicate share them, so differences are paired. The
analysis (attack/analysis.py) is the one attack.md §6 declares: one primary endpoint with an exact
test, everything else exploratory and Holm-corrected, each criterion calibrated on held-out images.

Each (replicate, arm) run is kept on disk with the key of everything it depends on, the code of the
modules that make its numbers included (``ExperimentDir.result``); a rerun skips finished runs and
resumes a killed training from its checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from attack.analysis import CRITERIA, summarize
from attack.compare import prompts_for, train_config
from attack.config import AttackConfig, resolve_attack
from attack.data import AttackSets, ImageSet, attack_sets
from attack.extract import BUCKETS, extract
from attack.layout import ExperimentDir
from attack.membership import FPR, T, auc, loss_scores, roc, tpr_at_fpr
from attack.sample import load_generations, sample_to_file
from attack.tables import format_experiment
from attack.train import data_digest, train
from dedup.core.layout import atomic_path, read_json, write_json
from dedup.core.markers import config_hash

ARMS = ("before", "after", "after_equal_passes", "random_removal")
QUESTIONS = {
    "after": "does deduplication lower memorization at the same training steps (the paper's protocol)?",
    "after_equal_passes": "does it, when each image is seen as often as before (steps scaled to the set)?",
    "random_removal": "does removing as many images at random lower it as much (the control)?",
}
# Modules whose code decides a run's numbers (data, model, training, sampling, scoring).
RESULT_MODULES = (
    "data",
    "model",
    "schedule",
    "train",
    "sample",
    "distance",
    "extract",
    "membership",
    "compare",
)
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


def code_digest() -> str:
    """sha256 of the modules whose code decides a run's numbers: a changed line reruns the runs."""
    import hashlib

    import attack

    digest = hashlib.sha256()
    root = Path(attack.__file__).parent
    for name in RESULT_MODULES:
        digest.update((root / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def null_scores(images: np.ndarray, used: list[str], sets: AttackSets, cfg: AttackConfig) -> dict[str, Any]:
    """attack.md §6's null calibration: held-out images (no arm trained on them) added to the search
    set; how many of them each criterion calls extracted is its false-positive count."""
    if sets.held_out is None or not len(sets.held_out):
        return {}
    n_ref = len(sets.reference)
    union = np.concatenate([sets.reference.images, sets.held_out.images])
    keys = sets.reference.keys + sets.held_out.keys
    k = np.concatenate([sets.k, np.ones(len(sets.held_out), dtype=sets.k.dtype)])
    ex = extract(images, used, union, keys, k, cfg.calibrated_threshold)
    held = ex.images[n_ref:]
    return {c: {"held_out": held.height, "extracted": int(held[f"extracted[{c}]"].sum())} for c in CRITERIA}


def per_image(ex: Any, member: np.ndarray) -> dict[str, Any]:
    """What the analysis needs of every reference image: key, copies, member, primary score, flags."""
    img = ex.images
    return {
        "key": img["key"].to_list(),
        "k": img["k"].to_list(),
        "member": member.tolist(),
        "primary_score": [round(float(v), 6) for v in img["primary_score"].to_list()],
        "extracted": {c: img[f"extracted[{c}]"].to_list() for c in CRITERIA},
    }


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
            "code": code_digest(),
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
    null = null_scores(images, used, sets, cfg)
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
        "per_image": per_image(ex, member),
        "null": null,
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
    summary = summarize(results, arms, experiment_settings(cfg))
    summary["notes"] = sorted(notes)
    write_json(paths.summary, summary)
    with atomic_path(paths.table) as tmp:
        tmp.write_text(format_experiment(summary), encoding="utf-8")
    return summary


def stored_results(out: Path, arms: tuple[str, ...] = ARMS) -> dict[int, dict[str, dict[str, Any]]]:
    """Every replicate whose arms all finished, read from disk (what ``bench.attack --tables`` and
    the report analyse). Whatever code made them: a run's key (with its code digest) decides only
    whether ``run_experiment`` may reuse it instead of training again."""
    paths = ExperimentDir(out)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for folder in sorted(paths.root.glob("seed[0-9][0-9][0-9]")):
        seed = int(folder.name[4:])
        runs = {a: paths.result(seed, a) for a in arms}
        if all(p.exists() for p in runs.values()):
            loaded = {a: read_json(p) for a, p in runs.items()}
            if all("per_image" in r for r in loaded.values()):
                results[seed] = loaded
    return results


def analyse_stored(out: Path, cfg: AttackConfig, arms: tuple[str, ...] = ARMS) -> dict[str, Any] | None:
    """The summary of the stored runs, without training anything (None when none has finished)."""
    results = stored_results(out, arms)
    if not results:
        return None
    return summarize(results, arms, experiment_settings(resolve_attack(cfg)))


def experiment_settings(cfg: AttackConfig) -> dict[str, Any]:
    return {
        **cfg.model_dump(mode="json"),
        "membership": f"loss at t={T} of 1000, mean of 8 noise draws; held-out singletons as non-members",
        "analysis": "attack.md §6: exact sign-flip tests, Holm over the exploratory family, t-intervals",
        "code": code_digest(),
    }


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
