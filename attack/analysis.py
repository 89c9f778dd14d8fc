"""The experiment's analysis as declared in attack.md §6, from the stored runs alone.

* **Primary endpoint**: for each reference image with 5+ copies in the before set, its best
  calibrated l2 over every generation of a model (``primary_score``, extract.py). Per replicate, the
  mean over those images of ``after - before`` (paired by image within the replicate); one-sided
  exact sign-flip test over replicates (the §6 fallback: the mixed model needs statsmodels, which this
  project does not depend on), its t-interval, and the power it had for the paper's effect (-23 %,
  read as a 23 % relative rise of the before arm's mean score).
* **Exploratory family**, Holm-corrected together: extraction counts per criterion and bucket
  (before - arm), the primary score for the other arms and for singletons, and an image-level
  sign-flip test of the primary difference. A cell is marked ``*`` only when its Holm-adjusted
  two-sided p is below 0.05; with 5 replicates no such p exists (the smallest is 1/16), and the
  tables say so rather than mark a bootstrap interval.
* **Null calibration**: the share of held-out images (no arm trained on them, added to the search
  set) that each criterion calls extracted, with a Clopper-Pearson interval, beside the rate for
  singletons the arm did train on.
* **Dose-response** (attack/dose.py): extraction against copies in the before set, a logistic fit
  in log2(copies) per arm and criterion, its 95 % band from a bootstrap over images (all replicates
  of an image move together).
* **Exposure and quality per arm** (#26 item 4, descriptive): unique images, samples and passes per
  unique image in each bucket; held-out denoising loss and pixel KID (attack/quality.py) with
  t-intervals over replicates, and the held-out loss against training steps.

attack/tables.py prints the tables of ``bench/RESULTS.md`` from this summary; the HTML report takes
its cells from the same ``cell_text``, so both say the same thing about every cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attack.dose import dose_response
from attack.extract import BUCKETS
from attack.membership import FPR
from attack.stats import (
    ALPHA,
    PAPER_EFFECT,
    clopper_pearson,
    holm,
    replicates_for_power,
    sign_flip_p,
    sign_flip_power,
    smallest_p,
    t_interval,
)

CRITERIA = ("calibrated<=1/3", "calibrated<=0.5", "calibrated<=1.0", "l2<=0.15")
PRIMARY_MIN_COPIES = 5  # attack.md §6
BUCKET_NAMES = [b[0] for b in BUCKETS]


def _per_image(result: dict[str, Any]) -> dict[str, Any] | None:
    return result.get("per_image")


def primary_differences(
    results: dict[int, dict[str, dict[str, Any]]], arm: str, low: int = PRIMARY_MIN_COPIES, high: int = 10**12
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Per replicate: mean(arm - before) of the primary score over images with low..high copies;
    the before arm's mean score; and per image key, its differences over replicates."""
    diffs, before_means = [], []
    by_image: dict[str, list[float]] = {}
    for seed in sorted(results):
        b, a = _per_image(results[seed]["before"]), _per_image(results[seed].get(arm, {}))
        if b is None or a is None:
            continue
        k = np.asarray(b["k"])
        pick = (k >= low) & (k <= high)
        if not pick.any():
            continue
        sb, sa = np.asarray(b["primary_score"])[pick], np.asarray(a["primary_score"])[pick]
        diffs.append(float(np.mean(sa - sb)))
        before_means.append(float(np.mean(sb)))
        for key, d in zip(np.asarray(b["key"])[pick], sa - sb, strict=True):
            by_image.setdefault(str(key), []).append(float(d))
    return diffs, before_means, by_image


def primary_endpoint(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The one pre-declared test: after vs before at equal steps, images with 5+ copies."""
    diffs, before_means, _ = primary_differences(results, "after")
    if not diffs:
        return None
    n = len(diffs)
    sd = float(np.std(diffs, ddof=1)) if n > 1 else None
    effect = PAPER_EFFECT * float(np.mean(before_means))
    p = sign_flip_p(diffs, "greater")
    return {
        "endpoint": f"best calibrated l2 over all generations, images with {PRIMARY_MIN_COPIES}+ copies, "
        "after - before at equal steps, mean per replicate",
        "test": "exact one-sided sign-flip permutation test over replicates (attack.md §6)",
        "replicates": n,
        "per_replicate": diffs,
        "before_mean_score": float(np.mean(before_means)),
        "estimate": float(np.mean(diffs)),
        "t95": t_interval(diffs),
        "p": p,
        "smallest_possible_p": smallest_p(n, "greater"),
        "significant": p is not None and p <= ALPHA,
        "paper_effect": effect,
        "power": None if sd is None else sign_flip_power(effect, sd, n),
        "replicates_for_80pct_power": None if sd is None else replicates_for_power(effect, sd),
    }


def _cell(diffs: list[float]) -> dict[str, Any]:
    return {
        "mean": float(np.mean(diffs)),
        "t95": t_interval(diffs),
        "p": sign_flip_p(diffs),
        "signs": [int(sum(d > 0 for d in diffs)), int(sum(d < 0 for d in diffs))],
    }


def exploratory(results: dict[int, dict[str, dict[str, Any]]], arms: tuple[str, ...]) -> dict[str, Any]:
    """Every secondary comparison, with Holm-adjusted p-values over the whole family."""
    seeds = sorted(results)
    cells: dict[str, Any] = {}
    for arm in arms:
        if arm == "before":
            continue
        for c in CRITERIA:
            for b in [*BUCKET_NAMES, "total"]:
                d = [
                    results[s]["before"]["extracted"][c][b] - results[s][arm]["extracted"][c][b]
                    for s in seeds
                ]
                cells[f"{arm}|extracted {c}|{b}"] = _cell(d)
        for name, low, high in (("5+ copies", PRIMARY_MIN_COPIES, 10**12), ("singletons", 1, 1)):
            if arm == "after" and name == "5+ copies":
                continue  # the primary endpoint, tested on its own
            diffs, _, _ = primary_differences(results, arm, low, high)
            if diffs:
                cells[f"{arm}|primary score (arm - before: a rise is less memorized)|{name}"] = _cell(diffs)
    _, _, by_image = primary_differences(results, "after")
    if by_image:
        per_image = [float(np.mean(v)) for v in by_image.values()]
        cells["after|primary score (after - before), images as units|5+ copies"] = {
            **_cell(per_image),
            "p": sign_flip_p(per_image),
            "units": len(per_image),
        }
    adjusted = holm([c["p"] for c in cells.values()])
    for cell, p in zip(cells.values(), adjusted, strict=True):
        cell["p_holm"] = p
        cell["significant"] = p is not None and p < ALPHA
    return {"family_size": sum(p is not None for p in adjusted), "cells": cells}


def null_calibration(results: dict[int, dict[str, dict[str, Any]]], arm: str) -> dict[str, Any] | None:
    """Per criterion, pooled over replicates: held-out images called extracted (the false-positive
    rate) against trained-on singletons called extracted."""
    seeds = [s for s in sorted(results) if arm in results[s] and results[s][arm].get("null")]
    if not seeds:
        return None
    out = {}
    for c in CRITERIA:
        fp = sum(results[s][arm]["null"][c]["extracted"] for s in seeds)
        n = sum(results[s][arm]["null"][c]["held_out"] for s in seeds)
        hit = trained = 0
        for s in seeds:
            img = _per_image(results[s][arm])
            if img is None:
                continue
            single = (np.asarray(img["k"]) == 1) & np.asarray(img["member"], dtype=bool)
            trained += int(single.sum())
            hit += int((single & np.asarray(img["extracted"][c], dtype=bool)).sum())
        out[c] = {
            "held_out": n,
            "false_positives": fp,
            "rate": fp / n if n else None,
            "cp95": clopper_pearson(fp, n),
            "trained_singletons": trained,
            "trained_singletons_extracted": hit,
            "trained_rate": hit / trained if trained else None,
        }
    return out


MEMBERSHIP_FPRS = (0.01, 0.05, 0.10)
MEMBERSHIP_BOOTSTRAP = 400


def membership_table(
    results: dict[int, dict[str, dict[str, Any]]], arm: str, seed: int = 0
) -> dict[str, Any] | None:
    """Membership inference per bucket, pooled over replicates (descriptive, beyond the paper): AUC
    with an interval that resamples replicates and, inside each, images (members and non-members);
    TPR at 1 / 5 / 10 % FPR as pooled counts with Clopper-Pearson intervals. The thresholds come from
    each replicate's own non-members, so at 1 % FPR of 200 the threshold is their 3rd-highest score:
    the 5 and 10 % columns rest on more of them."""
    from attack.membership import auc

    seeds = [s for s in sorted(results) if arm in results[s] and results[s][arm].get("scores")]
    if not seeds:
        return None
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"non_members_per_replicate": len(results[seeds[0]][arm]["scores"]["non_members"])}
    for name, low, high in [*BUCKETS, ("all", 1, 10**12)]:
        parts = []
        for s in seeds:
            sc = results[s][arm]["scores"]
            m, k = np.asarray(sc["members"], float), np.asarray(sc["k"])
            parts.append((m[(k >= low) & (k <= high)], np.asarray(sc["non_members"], float)))
        parts = [(m, n) for m, n in parts if len(m) and len(n)]
        if not parts:
            out[name] = None
            continue
        point = float(np.mean([auc(m, n) for m, n in parts]))
        draws = []
        for _ in range(MEMBERSHIP_BOOTSTRAP):
            picked = [parts[i] for i in rng.integers(0, len(parts), len(parts))]
            draws.append(
                np.mean(
                    [
                        auc(m[rng.integers(0, len(m), len(m))], n[rng.integers(0, len(n), len(n))])
                        for m, n in picked
                    ]
                )
            )
        entry: dict[str, Any] = {
            "members": int(sum(len(m) for m, _ in parts)),
            "auc": point,
            "auc95": [float(v) for v in np.percentile(draws, [2.5, 97.5])],
        }
        for f in MEMBERSHIP_FPRS:
            hits = total = 0
            for m, n in parts:
                allowed = int(np.floor(f * len(n)))
                threshold = np.sort(n)[::-1][allowed] if allowed < len(n) else -np.inf
                hits += int((m > threshold).sum())
                total += len(m)
            entry[f"tpr@{f:g}"] = {
                "hits": hits,
                "of": total,
                "rate": hits / total,
                "cp95": clopper_pearson(hits, total),
            }
        out[name] = entry
    return out


def power_by_criterion(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """attack.md §6 / #26 item 2: for each criterion's total extraction count, the power this run had
    to detect the paper's effect (23 % fewer unique images extracted after dedup, from this run's
    before mean) with the one-sided sign-flip test, at the spread of this run's per-replicate
    differences (before - after), and the replicates 80 % power would need. A criterion whose before
    arm extracts nothing has no effect to detect (None)."""
    seeds = [s for s in sorted(results) if "after" in results[s]]
    out: dict[str, Any] = {}
    for c in CRITERIA:
        before = [results[s]["before"]["extracted"][c]["total"] for s in seeds]
        diffs = [b - results[s]["after"]["extracted"][c]["total"] for s, b in zip(seeds, before, strict=True)]
        mean = float(np.mean(before)) if before else 0.0
        if len(seeds) < 2 or mean == 0:
            out[c] = None
            continue
        effect = PAPER_EFFECT * mean
        sd = float(np.std(diffs, ddof=1))
        out[c] = {
            "before_mean": mean,
            "paper_effect": effect,
            "sd": sd,
            "observed": float(np.mean(diffs)),
            "power": sign_flip_power(effect, sd, len(seeds)),
            "replicates_for_80pct_power": replicates_for_power(effect, sd),
        }
    return out


def _mean_t(values: list[Any]) -> dict[str, Any] | None:
    ok = [float(v) for v in values if v is not None]
    if not ok:
        return None
    return {"values": ok, "mean": float(np.mean(ok)), "t95": t_interval(ok)}


def _arm_rows(results: dict[int, dict[str, dict[str, Any]]], arm: str, field: str) -> list[Any]:
    """One field of an arm's result over the replicates that recorded it (older runs may not)."""
    rows = [results[s][arm].get(field) for s in sorted(results) if arm in results[s]]
    return [r for r in rows if r]


def exposure_table(results: dict[int, dict[str, dict[str, Any]]], arm: str) -> dict[str, Any] | None:
    """Per bucket, the mean over replicates of unique images, samples and passes per unique image."""
    rows = _arm_rows(results, arm, "exposure")
    if not rows:
        return None
    out = {}
    for b in BUCKET_NAMES:
        out[b] = {
            f: (None if any(r[b][f] is None for r in rows) else float(np.mean([r[b][f] for r in rows])))
            for f in ("unique_images", "samples", "passes_per_image")
        }
    return out


def quality_table(results: dict[int, dict[str, dict[str, Any]]], arm: str) -> dict[str, Any] | None:
    """Held-out loss and pixel KID over replicates, and the held-out loss per checkpoint (mean)."""
    rows = _arm_rows(results, arm, "quality")
    if not rows:
        return None
    curve: dict[int, list[float]] = {}
    for r in rows:
        for point in r.get("curve", []):
            if point.get("heldout_loss") is not None:
                curve.setdefault(int(point["step"]), []).append(float(point["heldout_loss"]))
    return {
        "heldout_loss": _mean_t([r.get("heldout_loss") for r in rows]),
        "pixel_kid": _mean_t([r.get("pixel_kid") for r in rows]),
        "curve": [[step, float(np.mean(v))] for step, v in sorted(curve.items())],
    }


def summarize(results: dict[int, dict[str, dict[str, Any]]], arms: tuple[str, ...], settings: dict) -> dict:
    """Everything the tables, the report and RESULTS show, from the per-(replicate, arm) results."""
    from attack.experiment import QUESTIONS

    seeds = sorted(results)
    buckets = [*BUCKET_NAMES, "total"]
    out: dict[str, Any] = {
        "replicates": seeds,
        "arms": {a: {"question": QUESTIONS.get(a, "the reference: the data as downloaded")} for a in arms},
        "settings": settings,
        "primary": primary_endpoint(results),
        "exploratory": exploratory(results, arms),
        "power": power_by_criterion(results),
    }
    for arm in arms:
        entry = out["arms"][arm]
        entry["training_images"] = [results[s][arm]["training_images"] for s in seeds]
        entry["steps"] = [results[s][arm]["steps"] for s in seeds]
        entry["passes_per_image"] = [results[s][arm].get("passes_per_image") for s in seeds]
        entry["final_loss"] = [results[s][arm].get("final_loss") for s in seeds]
        entry["extracted_mean"] = {
            c: {b: float(np.mean([results[s][arm]["extracted"][c][b] for s in seeds])) for b in buckets}
            for c in CRITERIA
        }
        entry["exposure"] = exposure_table(results, arm)
        entry["quality"] = quality_table(results, arm)
        entry["null"] = null_calibration(results, arm)
        entry["dose"] = dose_response(results, arm) if arm in ("before", "after") else None
        entry["membership_pooled"] = membership_table(results, arm)
        entry["membership"] = {}
        for b in [*BUCKET_NAMES, "all"]:
            aucs = [results[s][arm]["membership"][b]["auc"] for s in seeds]
            tprs = [results[s][arm]["membership"][b][f"tpr_at_{FPR:g}_fpr"] for s in seeds]
            aucs_ok = [a for a in aucs if a is not None]
            tprs_ok = [t for t in tprs if t is not None]
            entry["membership"][b] = {
                "auc_mean": float(np.mean(aucs_ok)) if aucs_ok else None,
                "auc_t95": t_interval(aucs_ok),
                "tpr_at_1pct_fpr_mean": float(np.mean(tprs_ok)) if tprs_ok else None,
                "tpr_t95": t_interval(tprs_ok),
            }
    return out
