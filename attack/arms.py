"""What each arm of the experiment trains on, and what that means per duplicate bucket (#13, #26).

The arms and their questions are in attack/experiment.py; here, pure functions of the attack's sets
and a replicate's seed: the training set of an arm, its steps, its exposure per bucket, and the
before set's copies that extraction searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attack.config import ARMS
from attack.data import AttackSets, ImageSet
from attack.extract import BUCKETS, bucket_of


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
    if arm == "bucket_matched_removal":
        return bucket_matched(sets, seed)
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def _bucket_of_key(key: str, sets: AttackSets) -> str:
    """A training sample's duplicate bucket: its group's copies in the before set ("" if ungrouped)."""
    return bucket_of(int(sets.k[sets.group_of[key]])) if key in sets.group_of else ""


def bucket_matched(sets: AttackSets, seed: int) -> ImageSet:
    """The exposure-matched control: per bucket, as many before-set samples kept as the after set
    holds there, chosen at random with the replicate's seed (kept in before-set key order)."""
    after_count: dict[str, int] = {}
    for key in sets.after.keys:
        b = _bucket_of_key(key, sets)
        after_count[b] = after_count.get(b, 0) + 1
    rng = np.random.default_rng([seed, 11])
    by_bucket: dict[str, list[int]] = {}
    for i, key in enumerate(sets.before.keys):
        by_bucket.setdefault(_bucket_of_key(key, sets), []).append(i)
    keep: list[int] = []
    for b in sorted(by_bucket):
        pool = by_bucket[b]
        n = min(len(pool), after_count.get(b, 0))
        keep += [pool[j] for j in rng.choice(len(pool), size=n, replace=False)]
    return sets.before.subset([sets.before.keys[i] for i in sorted(keep)])


def exposure(training: ImageSet, sets: AttackSets, steps: int, batch_size: int) -> dict[str, Any]:
    """Per duplicate bucket: unique images the arm trains on, its samples (copies) of them, and the
    expected passes over each unique image (all its copies counted) at the arm's steps."""
    groups = np.array([sets.group_of[k] for k in training.keys if k in sets.group_of], dtype=np.int64)
    per_sample = steps * batch_size / max(1, len(training))  # expected draws of one training sample
    out: dict[str, Any] = {}
    for name, lo, hi in BUCKETS:
        inside = groups[(sets.k[groups] >= lo) & (sets.k[groups] <= hi)]
        unique = len(np.unique(inside))
        out[name] = {
            "unique_images": unique,
            "samples": len(inside),
            "passes_per_image": round(len(inside) * per_sample / unique, 2) if unique else None,
        }
    return out


def variants_of(sets: AttackSets) -> tuple[np.ndarray, np.ndarray]:
    """Every before-set sample that belongs to a reference image's group, and that image's index:
    extraction searches all copies, not only the representatives (#26 item 7)."""
    rows = [i for i, key in enumerate(sets.before.keys) if key in sets.group_of]
    groups = np.array([sets.group_of[sets.before.keys[i]] for i in rows], dtype=np.int64)
    return sets.before.images[rows], groups


def members_of(training: ImageSet, sets: AttackSets) -> np.ndarray:
    """Per reference image: did this arm train on some copy of it?"""
    out = np.zeros(len(sets.reference), dtype=bool)
    for key in training.keys:
        if key in sets.group_of:
            out[sets.group_of[key]] = True
    return out
