"""The experiment's tests (attack.md §6) against values worked out by hand: significance only from
tests exact at the replicate count used."""

from __future__ import annotations

import numpy as np
import pytest

from attack.stats import (
    clopper_pearson,
    holm,
    replicates_for_power,
    sign_flip_p,
    sign_flip_power,
    smallest_p,
    t_interval,
)


def test_the_issue_case_is_not_significant_by_any_valid_test():
    d = [1, 1, 1, 0, 0]  # a 5-value percentile bootstrap gives [0.2, 1.0], "significant"
    assert sign_flip_p(d) == pytest.approx(8 / 32)  # the three ones share a sign: 2 x 2^2 patterns
    lo, hi = t_interval(d)
    assert lo == pytest.approx(-0.08, abs=0.01) and hi == pytest.approx(1.28, abs=0.01)


def test_five_replicates_cannot_reach_a_two_sided_005():
    assert smallest_p(5) == pytest.approx(0.0625) and smallest_p(5, "greater") == pytest.approx(1 / 32)
    assert sign_flip_p([3, 2, 4, 5, 1]) == pytest.approx(2 / 32)
    assert sign_flip_p([3, 2, 4, 5, 1], "greater") == pytest.approx(1 / 32)
    assert sign_flip_p([3, 2, 4, 5, 1], "less") == pytest.approx(1.0)


def test_monte_carlo_beyond_the_exact_range_is_valid_and_seeded():
    d = np.r_[np.ones(15), -np.ones(10)]
    p = sign_flip_p(d, seed=3)
    assert p == sign_flip_p(d, seed=3) and 0.3 < p < 0.8  # binomial: P(|S| >= 5) ~ 0.42
    assert sign_flip_p(np.ones(25), "greater") == pytest.approx(1 / 100_001)


def test_holm_adjusts_step_down_and_keeps_missing_cells():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # monotone: the larger p never falls below the smaller


def test_clopper_pearson_is_the_exact_binomial_interval():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    assert clopper_pearson(0, 0) is None


def test_power_grows_with_replicates_and_is_zero_where_no_p_can_reach_alpha():
    assert sign_flip_power(1.0, 1.0, 4) == 0.0  # 1/16 > 0.05 one-sided
    low, high = sign_flip_power(1.0, 1.0, 6), sign_flip_power(1.0, 1.0, 12)
    assert 0 < low < high <= 1
    n = replicates_for_power(1.0, 1.0)
    assert n is not None and sign_flip_power(1.0, 1.0, n, draws=500) >= 0.8 - 0.05


def test_membership_pools_replicates_with_exact_tpr_intervals():
    from attack.analysis import membership_table

    non = list(np.linspace(0, 1, 100))  # 100 non-members: at 5 % FPR the threshold is the 6th highest
    results = {
        s: {
            "before": {
                "scores": {"members": [2.0, 2.0, 0.5, 0.0], "k": [20, 20, 1, 1], "non_members": non},
            }
        }
        for s in (0, 1)
    }
    table = membership_table(results, "before")
    assert table["non_members_per_replicate"] == 100
    top = table["20+"]
    assert top["auc"] == pytest.approx(1.0) and top["tpr@0.05"]["hits"] == 4 and top["tpr@0.05"]["of"] == 4
    single = table["1"]["tpr@0.05"]
    assert single["hits"] == 0 and single["of"] == 4
    assert single["cp95"][1] == pytest.approx(1 - 0.025 ** (1 / 4))
    assert table["2-4"] is None  # no member in the bucket
    assert table["all"]["members"] == 8


def test_power_per_criterion_uses_the_papers_effect_on_this_runs_before_mean():
    """#26 item 2: each criterion's power for a 23 % drop of its before count, at the run's spread."""
    from attack.analysis import CRITERIA, power_by_criterion

    def result(totals):
        return {"extracted": {c: {"total": totals.get(c, 0)} for c in CRITERIA}}

    before = [{"calibrated<=0.5": 10, "calibrated<=1.0": 40} for _ in range(5)]
    after = [
        {"calibrated<=0.5": a, "calibrated<=1.0": 40 + d}
        for a, d in zip([7, 8, 7, 8, 7], [3, -3, 2, -2, 0], strict=True)
    ]
    results = {
        s: {"before": result(b), "after": result(a)}
        for s, (b, a) in enumerate(zip(before, after, strict=True))
    }
    power = power_by_criterion(results)
    assert power["calibrated<=1/3"] is None  # nothing extracted before: no effect to detect
    half = power["calibrated<=0.5"]
    assert half["before_mean"] == 10 and half["paper_effect"] == pytest.approx(2.296875)
    assert half["observed"] == pytest.approx(2.6) and half["power"] > 0.95
    assert half["replicates_for_80pct_power"] == 5  # the fewest that can reach p <= 0.05
    wide = power["calibrated<=1.0"]  # effect 9.2 against a spread of about 2.5 around zero
    assert wide["observed"] == 0 and wide["power"] > 0.9
    assert power_by_criterion({0: results[0]})["calibrated<=0.5"] is None  # one replicate: no spread
