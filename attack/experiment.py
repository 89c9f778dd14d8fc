"""The memorization measurement as a controlled experiment (#13; attack.md §4, and §5 beyond the paper).

Arms, all with the same architecture, resolution, batch size, initial weights (per replicate),
prompts and sampling seed:

- ``before``: the data as downloaded;
- ``after``: the deduplicated data, the same optimizer steps (the paper's protocol, attack.md §4);
- ``after_equal_passes``: the deduplicated data, steps scaled by |after| / |before|, so each image is
  seen about as often as in ``before`` (at equal steps a much smaller set is seen many more times,
  which confounds deduplication with exposure);
- ``random_removal``: as many images removed as dedup removed, at random, the same steps as
  ``after`` (does dedup lower memorization beyond what any removal of that size does?). It keeps far
  fewer unique images than dedup and leaves each surviving duplicated group's share of the data (its
  exposure at equal steps) as it was, so it answers only the size question;
- ``bucket_matched_removal``: the exposure-matched control (#26 item 4): from each duplicate bucket
  (copies in the before set) as many samples removed as dedup removed there, at random, so every
  bucket's samples, and so its exposure at equal steps, match ``after``'s; it differs from dedup only
  in *which* copies go (an image may lose all of them, another keep several).

Every arm reports its exposure per bucket (unique images, samples, passes per unique image) and its
quality (held-out denoising loss at every checkpoint, pixel KID of its generations to held-out
images: attack/quality.py), so a drop in memorization can be told from a model that learnt less.

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
from attack.arms import arm_steps, arm_training_set, exposure, members_of, variants_of
from attack.compare import prompts_for, train_config
from attack.config import ARMS, AttackConfig, resolve_attack
from attack.data import AttackSets, attack_sets
from attack.extract import BUCKETS, extract
from attack.layout import ExperimentDir
from attack.membership import FPR, T, auc, loss_scores, roc, tpr_at_fpr
from attack.quality import heldout_loss, pixel_kid
from attack.sample import load_generations, sample_to_file
from attack.tables import format_experiment
from attack.train import data_digest, train
from dedup.core.files import atomic_path, read_json, write_json
from dedup.core.markers import config_hash

QUESTIONS = {
    "after": "does deduplication lower memorization at the same training steps (the paper's protocol)?",
    "after_equal_passes": "does it, when each image is seen as often as before (steps scaled to the set)?",
    "random_removal": "does removing as many images at random lower it as much (the control)?",
    "bucket_matched_removal": "does removing as many copies per duplicate bucket at random, the same "
    "exposure per bucket as after, lower it as much (the exposure-matched control)?",
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
    "quality",
    "arms",
)
HOLDOUT = 200  # singletons no arm trains on: membership inference's non-members (setting)


def code_digest() -> str:
    """sha256 of the modules whose code decides a run's numbers: a changed line reruns the runs."""
    import hashlib

    import attack

    digest = hashlib.sha256()
    root = Path(attack.__file__).parent
    for name in RESULT_MODULES:
        digest.update((root / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def null_scores(
    images: np.ndarray,
    used: list[str],
    sets: AttackSets,
    cfg: AttackConfig,
    copies: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """attack.md §6's null calibration: held-out images (no arm trained on them) added to the search
    set; how many of them each criterion calls extracted is its false-positive count."""
    if sets.held_out is None or not len(sets.held_out):
        return {}
    n_ref = len(sets.reference)
    union = np.concatenate([sets.reference.images, sets.held_out.images])
    keys = sets.reference.keys + sets.held_out.keys
    k = np.concatenate([sets.k, np.ones(len(sets.held_out), dtype=sets.k.dtype)])
    variants = np.concatenate([copies[0], sets.held_out.images])
    variant_of = np.concatenate([copies[1], n_ref + np.arange(len(sets.held_out))])
    ex = extract(images, used, union, keys, k, cfg.calibrated_threshold, variants, variant_of)
    held = ex.images[n_ref:]
    return {c: {"held_out": held.height, "extracted": int(held[f"extracted[{c}]"].sum())} for c in CRITERIA}


def extract_with_null(images: np.ndarray, used: list[str], sets: AttackSets, cfg: AttackConfig) -> tuple:
    """The extraction against the reference images and the null calibration's, both searching every
    before-set copy (collected once)."""
    copies = variants_of(sets)
    ref = sets.reference
    ex = extract(images, used, ref.images, ref.keys, sets.k, cfg.calibrated_threshold, *copies)
    return ex, null_scores(images, used, sets, cfg, copies)


def quality_probe(sets: AttackSets, cfg: AttackConfig, seed: int):
    """What ``train`` measures at each checkpoint: the held-out denoising loss (attack/quality.py)."""
    if sets.held_out is None or not len(sets.held_out):
        return None
    from attack.schedule import Schedule
    from attack.train import device_for

    device = device_for(cfg.device)
    schedule = Schedule(train_config(cfg).schedule).to(device)
    held = sets.held_out

    def probe(model: Any) -> dict[str, float]:
        loss = heldout_loss(model, schedule, held.images, held.captions, device, seed)
        return {"heldout_loss": round(loss, 6)}

    return probe


def membership_scores(
    model: Path, sets: AttackSets, member: np.ndarray, seed: int, device: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Loss scores of the reference images and of the held-out non-members, and AUC / TPR per bucket
    (attack.md §5; members are the reference images the arm saw some copy of)."""
    scores = loss_scores(model, sets.reference.images, sets.reference.captions, seed=seed, device=device)
    held = (
        loss_scores(model, sets.held_out.images, sets.held_out.captions, seed=seed, device=device)
        if sets.held_out is not None and len(sets.held_out)
        else np.zeros(0)
    )
    membership = {}
    for name, lo, hi in [*BUCKETS, ("all", 1, 10**12)]:
        inside = member & (sets.k >= lo) & (sets.k <= hi)
        membership[name] = {
            "members": int(inside.sum()),
            "auc": auc(scores[inside], held),
            f"tpr_at_{FPR:g}_fpr": tpr_at_fpr(scores[inside], held),
        }
    return scores, held, membership


def quality_of(trained: dict[str, Any], generations: np.ndarray, sets: AttackSets) -> dict[str, Any]:
    """The arm's quality (attack/quality.py): held-out loss at the last checkpoint and against steps,
    pixel KID of its generations to the held-out images."""
    held = sets.held_out
    return {
        "heldout_loss": (trained.get("curve") or [{}])[-1].get("heldout_loss"),
        "pixel_kid": pixel_kid(generations, held.images) if held is not None and len(held) else None,
        "curve": trained.get("curve", []),
    }


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
    trained = train(
        training.images,
        training.captions,
        tcfg,
        run.model(arm),
        progress=progress,
        evaluate=quality_probe(sets, cfg, seed),
    )
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
    ex, null = extract_with_null(images, used, sets, cfg)
    with atomic_path(run.image_table(arm)) as tmp:
        ex.images.write_parquet(tmp)
    counts = ex.counts()
    member = members_of(training, sets)
    scores, held, membership = membership_scores(run.model(arm), sets, member, seed, cfg.device)
    result = {
        "key": key,
        "seed": seed,
        "arm": arm,
        "training_images": len(training),
        "steps": steps,
        "passes_per_image": round(steps * cfg.batch_size / max(1, len(training)), 2),
        "exposure": exposure(training, sets, steps, cfg.batch_size),
        "final_loss": trained.get("final_loss"),
        "quality": quality_of(trained, images, sets),
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
