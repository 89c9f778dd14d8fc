"""The report's PNG plots (matplotlib without a display; each written under a temporary name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.files import atomic_path
from dedup.report.numbers import BUCKETS


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save_png(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path.name


def plot_download(numbers: dict[str, Any], out: Path) -> str:
    plt = pyplot()
    labels = ["downloaded", *numbers["failures"]]
    values = [numbers["successes"], *numbers["failures"].values()]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(labels) + 0.8))
    colors = ["#2a9d8f"] + ["#e76f51"] * (len(labels) - 1)
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("URLs")
    ax.set_title("Download outcome")
    return save_png(fig, out / "download_outcome.png")


def plot_groups(numbers: dict[str, Any], out: Path) -> str:
    plt = pyplot()
    hist = {int(k): v for k, v in numbers["group_size_histogram"].items()}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.loglog(list(hist), list(hist.values()), "o", color="#264653", markersize=4)
    a.set_xlabel("group size (copies of one image)")
    a.set_ylabel("number of groups")
    a.set_title("Duplicate-group sizes (log-log)")
    names = [n for n, _, _ in BUCKETS]
    shares = [numbers["by_bucket"][n]["share_of_samples"] * 100 for n in names]
    b.bar(names, shares, color=["#8ab17d", "#e9c46a", "#f4a261", "#e76f51"])
    for i, v in enumerate(shares):
        b.text(i, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    b.set_xlabel("group size")
    b.set_ylabel("% of all samples")
    b.set_title("Share of the dataset in groups of each size")
    fig.tight_layout()
    return save_png(fig, out / "group_sizes.png")


def plot_sweep(sweep: pl.DataFrame, threshold: float | None, out: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(sweep["threshold"], sweep["removed"], "o-", color="#264653", label="samples removed")
    ax.set_xlabel("embedding cosine threshold")
    ax.set_ylabel("samples removed")
    if threshold is not None:
        ax.axvline(threshold, color="#999", linestyle="--", linewidth=1)
    if "precision" in sweep.columns:
        ax2 = ax.twinx()
        ax2.plot(
            sweep["threshold"], sweep["precision"], "s-", color="#2a9d8f", label="precision", markersize=3
        )
        ax2.plot(sweep["threshold"], sweep["recall"], "^-", color="#e76f51", label="recall", markersize=3)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("pairwise precision / recall")
        ax2.legend(loc="lower left", fontsize=8)
    ax.set_title("Threshold sweep (connected components of accepted pairs)")
    return save_png(fig, out / "threshold_sweep.png")
