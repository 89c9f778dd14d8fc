"""The controlled memorization experiment (#13): arms' step arithmetic and training sets, membership
statistics against brute force, and a tiny end-to-end run that resumes (the tests: test_stats.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attack.arms import arm_steps, arm_training_set, exposure, members_of, variants_of
from attack.config import ARMS
from attack.data import AttackSets, ImageSet
from attack.membership import auc, roc, tpr_at_fpr


def test_arm_steps():
    assert arm_steps("before", 1200, 1000, 300) == 1200
    assert arm_steps("after", 1200, 1000, 300) == 1200  # the paper's protocol: equal steps
    assert arm_steps("random_removal", 1200, 1000, 300) == 1200
    assert arm_steps("after_equal_passes", 1200, 1000, 300) == 360  # 1200 x 300 / 1000
    assert arm_steps("after_equal_passes", 1200, 1000, 1000) == 1200
    assert arm_steps("after_equal_passes", 10, 1000, 1) == 1  # never zero steps


def _sets() -> AttackSets:
    keys = [f"k{i:02d}" for i in range(10)]
    images = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    before = ImageSet(images, keys, [f"c{i}" for i in range(10)])
    # groups: k00-k03 one image (4 copies), k04-k05 another, k06..k09 singletons; dedup keeps k00, k04, k06..
    group_of = {
        **{k: 0 for k in keys[:4]},
        "k04": 1,
        "k05": 1,
        **{k: i - 4 for i, k in enumerate(keys) if i >= 6},
    }
    after = before.subset(["k00", "k04", "k06", "k07", "k08", "k09"])
    reference = before.subset(["k00", "k04", "k06", "k07", "k08", "k09"])
    return AttackSets(before, after, reference, np.array([4, 2, 1, 1, 1, 1]), "", group_of)


def test_each_arm_trains_on_its_own_set():
    sets = _sets()
    assert arm_training_set("before", sets, 0) is sets.before
    assert arm_training_set("after", sets, 0) is sets.after
    assert arm_training_set("after_equal_passes", sets, 0) is sets.after
    removed = [arm_training_set("random_removal", sets, s) for s in range(5)]
    assert all(len(r) == len(sets.after) and set(r.keys) <= set(sets.before.keys) for r in removed)
    assert arm_training_set("random_removal", sets, 3).keys == removed[3].keys  # the seed decides
    assert len({tuple(r.keys) for r in removed}) > 1
    with pytest.raises(ValueError, match="unknown arm"):
        arm_training_set("nope", sets, 0)
    assert set(ARMS) == {"before", "after", "after_equal_passes", "random_removal", "bucket_matched_removal"}


def test_the_exposure_matched_control_keeps_after_s_samples_per_bucket_at_random():
    sets = _sets()
    runs = [arm_training_set("bucket_matched_removal", sets, s) for s in range(12)]
    for r in runs:
        # per bucket (copies in the before set) as many samples as the after set: the 4 singletons,
        # and 2 of the six samples of the 2-4 bucket (the 4-copy and the 2-copy image's)
        assert set(r.keys) >= {"k06", "k07", "k08", "k09"} and len(r) == 6
        assert r.keys == sorted(r.keys)
    # which samples stay is random (sometimes both copies of one image), and the seed decides
    assert len({tuple(r.keys) for r in runs}) > 1
    assert arm_training_set("bucket_matched_removal", sets, 5).keys == runs[5].keys
    after = exposure(sets.after, sets, steps=60, batch_size=2)
    matched = [exposure(r, sets, steps=60, batch_size=2) for r in runs]
    # the same samples in every bucket, so the same exposure per bucket; not the same unique images
    assert all(m[b]["samples"] == after[b]["samples"] for m in matched for b in after)
    assert {m["2-4"]["unique_images"] for m in matched} == {1, 2}
    assert all(m["1"] == after["1"] for m in matched)
    before = exposure(sets.before, sets, steps=60, batch_size=2)
    assert before["2-4"] == {"unique_images": 2, "samples": 6, "passes_per_image": 36.0}  # 6 x 120/10 / 2
    assert before["1"] == {"unique_images": 4, "samples": 4, "passes_per_image": 12.0}
    assert before["20+"] == {"unique_images": 0, "samples": 0, "passes_per_image": None}
    assert after["2-4"] == {"unique_images": 2, "samples": 2, "passes_per_image": 20.0}  # 120/6 each


def test_extraction_searches_every_copy_of_each_reference_image():
    sets = _sets()
    images, groups = variants_of(sets)
    assert len(images) == 10 and groups.tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 4, 5]
    assert (images[1] == sets.before.images[1]).all()


def test_members_are_the_reference_images_an_arm_saw_some_copy_of():
    sets = _sets()
    only_copies = sets.before.subset(["k01", "k05", "k07"])  # no representative, but copies of 0 and 1
    assert members_of(only_copies, sets).tolist() == [True, True, False, True, False, False]


def _brute_auc(m, n):
    pairs = list(itertools.product(m, n))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auc_and_tpr_against_brute_force():
    rng = np.random.default_rng(0)
    m = np.round(rng.normal(1, 1, 40), 1)  # rounded: ties happen
    n = np.round(rng.normal(0, 1, 300), 1)
    assert auc(m, n) == pytest.approx(_brute_auc(m, n))
    assert auc(n, n) == pytest.approx(0.5) and auc(m + 100, n) == 1.0
    # at 1 % FPR of 300 non-members, 3 may score above the threshold
    t = np.sort(n)[::-1][3]
    assert tpr_at_fpr(m, n) == pytest.approx((m > t).mean())
    assert (n > t).mean() <= 0.01
    fpr, tpr = roc(m, n)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert auc(np.array([]), n) is None and tpr_at_fpr(m, np.array([])) is None
