"""The tests the experiment is allowed to claim significance from (attack.md §6).

With a handful of replicates a percentile bootstrap is too narrow (with 5 values its interval is about
0.63x a t-interval's width and covers ~83 %), so significance comes only from tests that are exact at
any replicate count:

* ``sign_flip_p``: the paired permutation test. Under the null (no arm effect) each replicate's
  difference is as likely positive as negative; the p-value counts the sign patterns (all 2^n of them
  up to n = 20, else a seeded Monte Carlo sample with the +1 correction) whose mean is at least as
  extreme as the observed one. With n = 5 the smallest one-sided p is 1/32, two-sided 1/16: no
  two-sided claim at 0.05 is possible, and the tables say so.
* ``t_interval``: the paired t-interval (n - 1 degrees of freedom), the interval reported beside it.
* ``holm``: Holm's step-down correction over a family of p-values (every exploratory cell together).
* ``clopper_pearson``: exact binomial interval (membership TPR, null false-positive rates).
* ``sign_flip_power``: the power of the one-sided sign-flip test to find a given mean effect when
  the per-replicate differences scatter as observed (normal model, simulated), and
  ``replicates_for_power`` the smallest replicate count that reaches a target power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05  # attack.md §6
EXACT_UP_TO = 20  # replicates for which every sign pattern is enumerated (2^20 ~ 10^6)
MONTE_CARLO = 100_000
POWER_DRAWS = 2_000
PAPER_EFFECT = (1280 - 986) / 1280  # CIFAR-10, attack.md §6: 1,280 -> 986 extracted, -23 %


def _signs(n: int, seed: int) -> np.ndarray:
    if n <= EXACT_UP_TO:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    rng = np.random.default_rng(seed)
    return rng.choice((1.0, -1.0), size=(MONTE_CARLO, n))


def sign_flip_p(diffs: Sequence[float], alternative: str = "two-sided", seed: int = 0) -> float | None:
    """Paired permutation p-value of mean(diffs) against 0; None with no replicate.

    ``alternative``: 'greater' (mean > 0), 'less', or 'two-sided' (|mean|)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return None
    signs = _signs(d.size, seed)
    means = signs @ d / d.size
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if alternative == "greater":
        hits = np.count_nonzero(means >= observed - tol)
    elif alternative == "less":
        hits = np.count_nonzero(means <= observed + tol)
    elif alternative == "two-sided":
        hits = np.count_nonzero(np.abs(means) >= abs(observed) - tol)
    else:
        raise ValueError(f"alternative: greater, less or two-sided (got {alternative!r})")
    if d.size <= EXACT_UP_TO:
        return float(hits / len(means))
    return float((hits + 1) / (len(means) + 1))


def smallest_p(n: int, alternative: str = "two-sided") -> float:
    """The smallest p-value the sign-flip test can give with n replicates."""
    return (1.0 if alternative == "two-sided" else 0.5) * 2.0 ** (1 - n) if n else 1.0


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Paired t-interval of the mean (None with fewer than two values)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (None stays None and is not counted in the family)."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact binomial interval for k successes in n trials (None when n = 0)."""
    from scipy import stats

    if n == 0:
        return None
    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def sign_flip_power(
    effect: float, sd: float, n: int, alpha: float = ALPHA, draws: int = POWER_DRAWS, seed: int = 0
) -> float:
    """Share of simulated experiments (n normal per-replicate differences, mean ``effect`` > 0,
    spread ``sd``) in which the one-sided sign-flip test rejects at ``alpha``."""
    if n == 0 or smallest_p(n, "greater") > alpha:
        return 0.0
    rng = np.random.default_rng(seed)
    sims = rng.normal(effect, max(sd, 1e-12), size=(draws, n))
    signs = _signs(n, seed)
    means = sims @ signs.T / n  # draws x patterns
    observed = sims.mean(axis=1, keepdims=True)
    p = (means >= observed - 1e-12).mean(axis=1)
    return float((p <= alpha).mean())


def replicates_for_power(
    effect: float, sd: float, target: float = 0.8, alpha: float = ALPHA, most: int = 40
) -> int | None:
    """The fewest replicates whose sign-flip test has ``target`` power (None beyond ``most``)."""
    for n in range(2, most + 1):
        if n > 14:  # the Monte Carlo patterns make larger n slow; the normal approximation is tight there
            from scipy import stats

            z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(target)
            need = math.ceil((z * sd / max(effect, 1e-12)) ** 2)
            need = max(n, need)
            return need if need <= most else None
        if sign_flip_power(effect, sd, n, alpha, draws=500) >= target:
            return n
    return None
