"""The before/after deduplication experiment (attack.md §4; Carlini et al. §5 and §7.1).

1. Train one DDPM on the data as downloaded and one on the deduplicated data, with the same
   architecture, resolution, optimizer steps, batch size and seed.
2. Sample the same number of images from each, with the same prompts and seed.
3. Match every sample to its nearest image among the unique images of the *before* set and score it
   with the calibrated l2 (plain l2 <= 0.15 beside it).
4. Report unique training images extracted before and after, split by duplicate count in the before
   set (1, 2-4, 5-19, 20+), and the (training image, generation) pairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import typer

from attack.config import AttackConfig, resolve_attack
from attack.data import AttackSets, attack_sets
from attack.extract import BUCKETS, Extraction, extract
from attack.layout import AttackDir
from attack.model import UNetConfig
from attack.sample import load_generations, sample_to_file
from attack.train import TrainConfig, data_digest, train
from dedup.core.files import atomic_path, read_json, write_json
from dedup.core.markers import config_hash

WHICH = ("before", "after")


def train_config(cfg: AttackConfig) -> TrainConfig:
    return TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=cfg.warmup,
        ema=cfg.ema,
        seed=cfg.seed,
        schedule=cfg.schedule,
        caption_dropout=cfg.caption_dropout,
        checkpoint_every=max(100, cfg.steps // 10),
        device=cfg.device,
        unet=UNetConfig(
            resolution=cfg.resolution,
            channels=cfg.channels,
            channel_mults=list(cfg.channel_mults),
            attention=cfg.attention,
            conditional=cfg.conditional,
        ),
    )


def prompts_for(sets: AttackSets, cfg: AttackConfig) -> list[str] | None:
    """The prompt list both models are sampled with, cycled to the sample count: every reference
    image's kept caption once, and the captions of duplicated groups ``duplicated_prompt_repeats``
    times.

    Spending more generations on duplicated captions follows the paper's targeting (attack.md §3.1:
    the attack goes after the most-duplicated captions): on the demo budget one generation per
    caption rarely lands on its image even when the model has memorized it, while the best of 8 does
    (bench/RESULTS.md, "Attack"). Singletons still get one generation each, and the list is the same
    for the before and after model, so the comparison stays like for like.
    """
    if not cfg.conditional:
        return None
    repeats = np.where(sets.k > 1, cfg.duplicated_prompt_repeats, 1)
    return [c for c, r in zip(sets.reference.captions, repeats, strict=True) for _ in range(int(r))]


def run_compare(
    before: Path,
    after: Path,
    out: Path,
    cfg: AttackConfig,
    clusters: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    cfg = resolve_attack(cfg)
    paths = AttackDir(out)
    started = time.time()
    sets = attack_sets(before, after, cfg.resolution, clusters, cfg.max_distinct, cfg.seed)
    stage_key = config_hash(
        {
            "config": cfg.model_dump(mode="json"),
            "before": data_digest(sets.before.images, sets.before.captions),
            "after": data_digest(sets.after.images, sets.after.captions),
            "reference": sets.reference.keys,
        }
    )
    if paths.summary.exists():
        previous = read_json(paths.summary)
        if previous.get("stage_key") == stage_key:
            return {**previous, "skipped": True}
    with atomic_path(paths.reference) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=sets.reference.images,
            keys=np.array(sets.reference.keys),
            k=sets.k,
            captions=np.array([c or "" for c in sets.reference.captions], dtype=str),
        )
    tcfg = train_config(cfg)
    prompts = prompts_for(sets, cfg)
    results: dict[str, Any] = {}
    extractions: dict[str, Extraction] = {}
    for which, data in (("before", sets.before), ("after", sets.after)):
        if progress:
            typer.echo(
                f"   {which}: training on {len(data)} images ({cfg.steps} steps, batch {cfg.batch_size})"
            )
        t0 = time.time()
        trained = train(data.images, data.captions, tcfg, paths.model(which), progress=progress)
        t1 = time.time()
        sample_to_file(
            paths.model(which),
            paths.generations(which),
            cfg.samples,
            prompts,
            cfg.sample_steps,
            cfg.guidance,
            seed=cfg.seed + 1,
            device=cfg.device,
            progress=progress,
        )
        t2 = time.time()
        images, used_prompts = load_generations(paths.generations(which))
        ex = extract(
            images, used_prompts, sets.reference.images, sets.reference.keys, sets.k, cfg.calibrated_threshold
        )
        for table, path in (
            (ex.generations, paths.generation_table(which)),
            (ex.images, paths.image_table(which)),
        ):
            with atomic_path(path) as tmp:
                table.write_parquet(tmp)
        extractions[which] = ex
        results[which] = {
            "training_images": len(data),
            "train": {k: v for k, v in trained.items() if k != "config"},
            "train_seconds_this_run": round(t1 - t0, 1),
            "sample_seconds": round(t2 - t1, 1),
            **ex.counts(),
        }
    summary = {
        "stage_key": stage_key,
        "protocol": "Carlini et al. 2023 §5/§7.1 as in attack.md §4",
        "settings": {
            **cfg.model_dump(mode="json"),
            **extractions["before"].settings,
            # both notes survive: the data's (sampling) and the extraction's (a small neighbourhood)
            "note": "; ".join(n for n in (sets.note, extractions["before"].settings.get("note")) if n)
            or None,
            "same_for_both": "architecture, resolution, steps, batch size, seed, prompts, sample count",
        },
        "reference_images": len(sets.reference),
        "reference_by_bucket": {
            name: int(((sets.k >= lo) & (sets.k <= hi)).sum()) for name, lo, hi in BUCKETS
        },
        "before": results["before"],
        "after": results["after"],
        "seconds": round(time.time() - started, 1),
    }
    write_json(paths.summary, summary)
    pairs_figure(paths, sets, extractions, cfg.calibrated_threshold)
    return summary


def pairs_figure(
    paths: AttackDir, sets: AttackSets, extractions: dict[str, Extraction], threshold: float
) -> Path:
    """(training image, generation) pairs: the extracted ones, or the closest if none was extracted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for which in WHICH:
        gens, _ = load_generations(paths.generations(which))
        imgs = (
            extractions[which].images.filter(pl.col("best_generation").is_not_null()).sort("best_calibrated")
        )
        hit = imgs.filter(pl.col("best_calibrated") <= threshold)
        shown = (hit if hit.height else imgs).head(8)
        label = "extracted" if hit.height else "closest (none extracted)"
        for r in shown.iter_rows(named=True):
            rows.append((which, label, sets.reference.images[r["index"]], gens[r["best_generation"]], r))
    cols = max(1, min(8, max((sum(1 for x in rows if x[0] == w) for w in WHICH), default=1)))
    fig, axes = plt.subplots(4, cols, figsize=(1.6 * cols, 7.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for w, which in enumerate(WHICH):
        mine = [x for x in rows if x[0] == which]
        for c, (_, _label, train_img, gen_img, r) in enumerate(mine[:cols]):
            axes[2 * w, c].imshow(train_img, interpolation="nearest")
            axes[2 * w, c].set_title(f"k={r['k']}", fontsize=7)
            axes[2 * w + 1, c].imshow(gen_img, interpolation="nearest")
            axes[2 * w + 1, c].set_title(f"cal {r['best_calibrated']:.2f}", fontsize=7)
        if mine:
            axes[2 * w, 0].text(
                -0.15,
                0.5,
                f"{which}: training",
                transform=axes[2 * w, 0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize=8,
            )
            axes[2 * w + 1, 0].text(
                -0.15,
                0.5,
                f"{mine[0][1]}",
                transform=axes[2 * w + 1, 0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize=7,
            )
    fig.suptitle("training image (top) and the model's generation (bottom); cal = calibrated l2", fontsize=9)
    fig.tight_layout()
    with atomic_path(paths.pairs_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return paths.pairs_png


def format_compare(summary: dict[str, Any]) -> str:
    names = [b[0] for b in BUCKETS]
    ref = summary["reference_by_bucket"]
    lines = [
        f"unique training images extracted, of {summary['reference_images']} reference images "
        f"(by copies in the before set: " + ", ".join(f"{n}: {ref[n]}" for n in names) + ")",
        f"  {'criterion':<18} {'model':<7}" + "".join(f"{n:>7}" for n in names) + f"{'total':>7}",
    ]
    for crit in summary["before"]["by_criterion"]:
        for which in WHICH:
            row = summary[which]["by_criterion"][crit]
            lines.append(
                f"  {crit if which == 'before' else '':<18} {which:<7}"
                + "".join(f"{row[n]:>7}" for n in names)
                + f"{row['total']:>7}"
            )
    b, a = summary["before"]["continuous"], summary["after"]["continuous"]
    lines.append(
        "  generations whose nearest training image is duplicated: "
        f"before {b['share_nearest_duplicated']:.1%}, after {a['share_nearest_duplicated']:.1%}"
    )
    hb, ha = b["images_hit_by_bucket"], a["images_hit_by_bucket"]
    lines.append(
        "  duplicated images that are some generation's nearest: before "
        f"{sum(hb[n] for n in names[1:])}, after {sum(ha[n] for n in names[1:])} "
        f"(of {sum(ref[n] for n in names[1:])})"
    )
    lines.append(
        f"  best calibrated score: before {b['min_calibrated']}, after {a['min_calibrated']}; "
        f"threshold {summary['settings']['primary_threshold']}, alpha {summary['settings']['alpha']}, "
        f"n {summary['settings']['neighbours_used']} (centre: the training image)"
    )
    st = summary["settings"]
    if st.get("conditional", True):
        lines.append(
            f"  {st['samples']} generations per model ({st['sample_steps']} DDIM steps, "
            f"guidance {st['guidance']}), "
            f"prompted with every reference caption once and each duplicated group's caption "
            f"{st.get('duplicated_prompt_repeats', 1)} times"
        )
    if st.get("note"):
        lines.append(f"  note: {st['note']}")
    if summary.get("skipped"):
        lines.insert(
            0, "up to date: same settings and training data as the last run (models and samples reused)"
        )
    return "\n".join(lines)
