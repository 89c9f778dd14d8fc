"""attack.md §6's dose-response: extraction against copies in the before set, a logistic fit in
log2(copies) per arm and criterion, its 95 % band from a bootstrap over images (all replicates of an
image move together), beside the observed share per bucket."""

from __future__ import annotations

from typing import Any

import numpy as np

from attack.extract import BUCKETS

DOSE_CRITERIA = ("calibrated<=1/3", "calibrated<=0.5", "calibrated<=1.0")
DOSE_GRID = (1, 2, 4, 8, 16, 32, 64)
DOSE_BOOTSTRAP = 400  # resamples of images (hundreds of them: the percentile band is sound there)


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, rounds: int = 50) -> np.ndarray:
    """(intercept, slope) of P(y) = sigmoid(a + b x) by Newton's method, a small ridge keeping it
    finite when the classes separate."""
    X = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(rounds):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (y - p) - ridge * w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-9:
            break
    return w


def _curve(w: np.ndarray) -> np.ndarray:
    x = np.log2(np.asarray(DOSE_GRID, dtype=float))
    return 1 / (1 + np.exp(-(w[0] + w[1] * x)))


def dose_response(
    results: dict[int, dict[str, dict[str, Any]]], arm: str, seed: int = 0
) -> dict[str, Any] | None:
    """Extraction against copies in the before set (members of the arm only), pooled over
    replicates: observed rate per bucket, the logistic curve on DOSE_GRID and its bootstrap band."""
    rows = [results[s][arm].get("per_image") for s in sorted(results) if arm in results[s]]
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    keys = np.concatenate([np.asarray(r["key"]) for r in rows])
    k = np.concatenate([np.asarray(r["k"], dtype=float) for r in rows])
    member = np.concatenate([np.asarray(r["member"], dtype=bool) for r in rows])
    unique, image_of = np.unique(keys, return_inverse=True)
    out: dict[str, Any] = {"grid": list(DOSE_GRID)}
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero((image_of == i) & member) for i in range(len(unique))]
    groups = [g for g in groups if g.size]
    for c in DOSE_CRITERIA:
        y = np.concatenate([np.asarray(r["extracted"][c], dtype=float) for r in rows])
        x = np.log2(k)
        observed = {}
        for name, low, high in BUCKETS:
            inside = member & (k >= low) & (k <= high)
            observed[name] = [int(y[inside].sum()), int(inside.sum())]
        if not y[member].any():  # nothing extracted: no curve to fit (a ridge fit would invent a slope)
            out[c] = {"intercept": None, "slope_per_doubling": None, "curve": [0.0] * len(DOSE_GRID),
                      "band95": [[0.0] * len(DOSE_GRID)] * 2, "observed": observed}  # fmt: skip
            continue
        fit = logistic_fit(x[member], y[member])
        band = []
        for _ in range(DOSE_BOOTSTRAP):
            pick = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
            band.append(_curve(logistic_fit(x[pick], y[pick])))
        lo, hi = np.percentile(np.array(band), [2.5, 97.5], axis=0)
        out[c] = {
            "intercept": float(fit[0]),
            "slope_per_doubling": float(fit[1]),
            "curve": _curve(fit).tolist(),
            "band95": [lo.tolist(), hi.tolist()],
            "observed": observed,
        }
    return out
