"""The attack's part of the HTML report: numbers from the attack's files (attack.layout.AttackDir,
ExperimentDir), charts, thumbnails of the closest (training image, generation) pairs. dedup's
report finds this through an entry point, so the dependency runs one way: attack -> dedup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from attack.experiment import roc_curves
from attack.extract import BUCKETS
from attack.layout import AttackDir, ExperimentDir
from attack.sample import load_generations
from attack.tables import cell_text, primary_text
from dedup.core.errors import UserError
from dedup.core.files import read_json
from dedup.core.layout import WorkDir
from dedup.report.gallery import array_thumb
from dedup.report.html import missing, table
from dedup.report.plots import pyplot, save_png


def stages_present(work: WorkDir) -> dict[str, bool]:
    """Which of the attack's runs the work directory holds (dedup's report lists them with its own)."""
    paths = AttackDir(work.attack_dir)
    return {"attack": paths.summary.exists(), "generate_filter": paths.generate_filter_summary.exists()}


def attack_numbers(work: WorkDir) -> dict[str, Any] | None:
    paths = AttackDir(work.attack_dir)
    if not paths.summary.exists():
        return None
    s = read_json(paths.summary)
    out: dict[str, Any] = {
        "settings": s["settings"],
        "reference_images": s["reference_images"],
        "reference_by_bucket": s["reference_by_bucket"],
    }
    for which in ("before", "after"):
        image_table = paths.image_table(which)
        if not image_table.exists():
            continue
        imgs = pl.read_parquet(image_table)
        crits = {c[len("extracted[") : -1]: c for c in imgs.columns if c.startswith("extracted[")}
        out[which] = {
            "training_images": s[which]["training_images"],
            "extracted": {
                crit: {
                    "total": int(imgs[col].sum()),
                    **{name: int(imgs.filter(pl.col("bucket") == name)[col].sum()) for name, _, _ in BUCKETS},
                }
                for crit, col in crits.items()
            },
            "continuous": s[which]["continuous"],
            "train": s[which]["train"],
        }
    return out


def plot_memorization(numbers: dict[str, Any], out: Path) -> str | None:
    """Bars of extracted images per bucket, before and after; None when every count is zero (the page
    then says so in words: empty axes would look like a broken chart)."""
    names = [n for n, _, _ in BUCKETS]
    crits = list(numbers["before"]["extracted"])
    if not any(numbers[w]["extracted"][c]["total"] for w in ("before", "after") for c in crits):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(crits), figsize=(2.6 * len(crits), 3), squeeze=False)
    for ax, crit in zip(axes[0], crits, strict=True):
        x = np.arange(len(names))
        b = [numbers["before"]["extracted"][crit][n] for n in names]
        a = [numbers["after"]["extracted"][crit][n] for n in names]
        ax.bar(x - 0.2, b, 0.4, label="before dedup", color="#e76f51")
        ax.bar(x + 0.2, a, 0.4, label="after dedup", color="#2a9d8f")
        ax.set_xticks(x, names)
        ax.set_title(crit, fontsize=9)
        ax.set_xlabel("copies in training set")
    axes[0][0].set_ylabel("unique training images extracted")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Memorization before and after dedup")
    fig.tight_layout()
    return save_png(fig, out / "memorization.png")


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> str | None:
    """Membership-inference ROC per arm, false-positive rate on a log axis (the low-FPR end is what an
    attacker can use); None without scores."""
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for arm, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=arm, linewidth=1.4)
    ax.plot([1e-4, 1], [1e-4, 1], color="#999", linewidth=0.8, linestyle="--", label="chance")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false-positive rate (held-out images)")
    ax.set_ylabel("true-positive rate (training images)")
    ax.set_title("Membership inference, loss at t=100", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out / "membership_roc.png")


def plot_quality(summary: dict[str, Any], out: Path) -> str | None:
    """Held-out denoising loss against training steps per arm (#26 item 4: did an arm that memorizes
    less simply learn less?); None before any arm recorded a curve."""
    curves = {a: (e.get("quality") or {}).get("curve") for a, e in summary["arms"].items()}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for arm, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", markersize=3, label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out denoising loss (t = 100 ... 900)")
    ax.set_title("Quality against steps (mean over replicates)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out / "quality_curves.png")


def _quality_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """Per arm: what it trained on in the most duplicated bucket and how well it learnt."""
    rows = []
    for arm, e in summary["arms"].items():
        q, x = e.get("quality") or {}, (e.get("exposure") or {}).get("20+") or {}
        loss, kid = q.get("heldout_loss"), q.get("pixel_kid")
        rows.append(
            [
                arm,
                "-" if not x else f"{x['unique_images']:.1f} / {x['samples']:.1f}",
                "-" if not x or x["passes_per_image"] is None else f"{x['passes_per_image']:.0f}",
                "-" if loss is None else f"{loss['mean']:.4f}",
                "-" if kid is None else f"{kid['mean']:.5f}",
            ]
        )
    return rows


def plot_dose(summary: dict[str, Any], out: Path) -> str | None:
    """Extraction against copies in the before set, before and after (attack.md §6 dose-response):
    the logistic fit with its 95 % band, and the observed share per bucket; None without a fit."""
    arms = [a for a in ("before", "after") if (summary["arms"].get(a) or {}).get("dose")]
    if not arms:
        return None
    from attack.dose import DOSE_CRITERIA

    plt = pyplot()
    colours = {"before": "#e76f51", "after": "#2a9d8f"}
    mids = {"1": 1, "2-4": 3, "5-19": 10, "20+": 32}
    fig, axes = plt.subplots(1, len(DOSE_CRITERIA), figsize=(3.0 * len(DOSE_CRITERIA), 3), squeeze=False)
    for ax, crit in zip(axes[0], DOSE_CRITERIA, strict=True):
        for arm in arms:
            d = summary["arms"][arm]["dose"]
            grid = d["grid"]
            ax.plot(grid, d[crit]["curve"], color=colours[arm], label=arm)
            ax.fill_between(grid, d[crit]["band95"][0], d[crit]["band95"][1], color=colours[arm], alpha=0.2)
            obs = [(mids[b], hit / n) for b, (hit, n) in d[crit]["observed"].items() if n]
            ax.scatter([o[0] for o in obs], [o[1] for o in obs], color=colours[arm], s=12)
        ax.set_xscale("log", base=2)
        ax.set_title(crit, fontsize=9)
        ax.set_xlabel("copies in the before set")
    axes[0][0].set_ylabel("share of trained images extracted")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Dose-response: extraction against duplicate count (95 % band over images)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, out / "dose_response.png")


def memorization_section(work: WorkDir, out: Path, summary: dict, settings: dict) -> dict[str, Any]:
    """The report's memorization section (dedup.report.stage, through the ``dedup.report_sections`` entry
    point): the before/after comparison, the controlled experiment, per-group risk and
    generate-and-filter, each from the attack's files; what it shows is added to ``summary`` and
    ``settings``."""
    attack = attack_numbers(work)
    section: dict[str, Any] = {
        "missing": None,
        "compare": None,
        "experiment": None,
        "risk": None,
        "generate_filter": None,
    }
    clusters = pl.read_parquet(work.clusters) if work.clusters.exists() else None
    if attack is None:
        section["missing"] = missing(
            "attack", f"dedup attack compare --before {work.root} --after {work.root}"
        )
    else:
        summary["attack"] = attack
        settings["attack"] = attack["settings"]
        if "before" in attack and "after" in attack:
            names = [n for n, _, _ in BUCKETS]
            rows = []
            for crit in attack["before"]["extracted"]:
                for which in ("before", "after"):
                    e = attack[which]["extracted"][crit]
                    rows.append(
                        [crit if which == "before" else "", which, *[e[n] for n in names], e["total"]]
                    )
            cb, ca = attack["before"]["continuous"], attack["after"]["continuous"]
            section["compare"] = {
                "plot": plot_memorization(attack, out),
                "nothing_extracted": "Neither model came within any threshold of a training image: "
                "0 images extracted before and after at every criterion, so there is nothing to chart.",
                "table": table(["criterion", "model", *names, "total"], rows, {2, 3, 4, 5, 6}),
                "share_before": f"{cb['share_nearest_duplicated']:.1%}",
                "share_after": f"{ca['share_nearest_duplicated']:.1%}",
                "min_before": "" if cb["min_calibrated"] is None else cb["min_calibrated"],
                "min_after": "" if ca["min_calibrated"] is None else ca["min_calibrated"],
                "threshold": attack["settings"].get("primary_threshold") or "",
                "pairs": _extracted_pairs(work, out),
            }
    section["experiment"] = _experiment(work, out)
    if clusters is not None:
        section["risk"] = _risk_table(work, clusters)
    gf = AttackDir(work.attack_dir).generate_filter_summary
    if gf.exists():
        g = read_json(gf)
        summary["generate_filter"] = g
        settings["generate_filter"] = g["settings"]
        section["generate_filter"] = {
            "generator": g["generator"],
            "table": table(
                ["copies", "captions", "flagged", "verified"],
                [[n, v["captions"], v["flagged"], v["verified"]] for n, v in g["by_bucket"].items()],
                {1, 2, 3},
            ),
        }
    return section


def _experiment(work: WorkDir, out: Path) -> dict[str, Any] | None:
    """The controlled experiment's arms (dedup attack experiment): each arm's question, the paired
    difference at the paper's 1/3 with its interval, membership AUC per bucket, and the ROC curves."""
    paths = ExperimentDir(work.attack_dir / "experiment")
    if not paths.summary.exists():
        return None
    s = read_json(paths.summary)
    names = [n for n, _, _ in BUCKETS]
    rows, mia = [], []
    cells_of = s.get("exploratory", {}).get("cells", {})
    for arm, e in s["arms"].items():
        if arm != "before":  # the same cell text as bench/RESULTS.md (attack/analysis.py)
            cells = [cell_text(cells_of[f"{arm}|extracted calibrated<=1/3|{b}"]) for b in [*names, "total"]]
        else:
            cells = [f"{e['extracted_mean']['calibrated<=1/3'][b]:.1f} extracted" for b in [*names, "total"]]
        rows.append([arm, e["question"], *cells])
        mem = e["membership"]
        mia.append(
            [
                arm,
                *[
                    "-" if mem[b]["auc_mean"] is None else f"{mem[b]['auc_mean']:.3f}"
                    for b in [*names, "all"]
                ],
            ]
        )
    seeds = s["replicates"]
    roc = plot_roc(roc_curves(paths, seeds, tuple(s["arms"])), out)
    return {
        "replicates": len(seeds),
        "one_seed": len(seeds) < 2,
        "primary": primary_text(s.get("primary")),
        "dose": plot_dose(s, out),
        "table": table(["arm", "question", *names, "total"], rows),
        "membership": table(["arm", *names, "all"], mia),
        "roc": roc,
        "no_roc": "No membership scores yet: the ROC curve appears when an arm has finished.",
        "quality": table(
            ["arm", "20+ bucket: unique images / samples", "passes per image", "held-out loss", "pixel KID"],
            _quality_rows(s),
            {1, 2, 3, 4},
        ),
        "quality_plot": plot_quality(s, out),
    }


def _extracted_pairs(work: WorkDir, out: Path) -> list[dict[str, Any]]:
    """The closest (training image, generation) pairs of each model, with their thumbnails."""
    paths = AttackDir(work.attack_dir)
    if not paths.reference.exists():
        return []
    try:
        with np.load(paths.reference, allow_pickle=False) as ref:  # never unpickle a file on disk
            ref_images = ref["images"]
    except (ValueError, OSError, KeyError) as err:
        raise UserError(
            f"{paths.reference}: unreadable ({str(err).splitlines()[0]}); rerun the attack"
        ) from None
    shown = []
    for which in ("before", "after"):
        if not paths.image_table(which).exists() or not paths.generations(which).exists():
            continue
        gens, _ = load_generations(paths.generations(which))
        imgs = (
            pl.read_parquet(paths.image_table(which))
            .filter(pl.col("best_generation").is_not_null())
            .sort("best_calibrated")
            .head(6)
        )
        for r in imgs.iter_rows(named=True):
            shown.append(
                {
                    "train": array_thumb(
                        ref_images[r["index"]], out / "thumbs" / f"{which}_train_{r['index']}.png"
                    ),
                    "generated": array_thumb(
                        gens[r["best_generation"]], out / "thumbs" / f"{which}_gen_{r['best_generation']}.png"
                    ),
                    "k": r["k"],
                    "model": which,
                    "flag": "extracted" if r.get("extracted[calibrated<=1/3]") else "not extracted",
                    "calibrated": f"{r['best_calibrated']:.3f}",
                    "l2": f"{r['best_l2']:.3f}",
                }
            )
    return shown


def _risk_table(work: WorkDir, clusters: pl.DataFrame) -> dict[str, Any]:
    """Per-group risk: duplicate count, and the attack's verdict on the group's kept image where it ran."""
    paths = AttackDir(work.attack_dir)
    top = (
        clusters.filter(pl.col("is_representative"))
        .sort(["cluster_size", "cluster_id"], descending=[True, False])
        .head(15)
        .select("key", "cluster_id", "cluster_size")
    )
    results: dict[str, dict[str, Any]] = {}
    for which in ("before", "after"):
        if paths.image_table(which).exists():
            t = pl.read_parquet(paths.image_table(which))
            for r in t.iter_rows(named=True):
                results.setdefault(r["key"], {})[which] = r
    rows = []
    for r in top.iter_rows(named=True):
        res = results.get(r["key"], {})
        cells = [r["cluster_id"], r["cluster_size"]]
        for which in ("before", "after"):
            x = res.get(which)
            cells.append(
                "-"
                if x is None or x.get("best_calibrated") is None
                else f"{x['best_calibrated']:.2f}"
                + (" extracted" if x.get("extracted[calibrated<=1/3]") else "")
            )
        rows.append(cells)
    note = (
        "Best calibrated l2 among the generations whose nearest training image is the group's kept "
        "image (lower is closer to a copy; extracted at 1/3). A dash: no generation of that model "
        "landed nearest to it."
        if results
        else "The attack has not scored these groups; the duplicate count alone is the risk "
        "(extraction concentrates on images duplicated ~100 times or more, attack.md §3)."
    )
    return {
        "note": note,
        "table": table(["group", "copies", "best calibrated l2, before", "after"], rows, {1}),
    }
