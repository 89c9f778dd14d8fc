"""Counting extracted training images (attack.md §2 and §4.3).

For every generation: its nearest training image (exact FAISS search over pixel vectors of the
reference set: the unique images of the before set), the plain l2, tiled l2 and calibrated l2 to it,
and the verdicts. A reference image stands for its whole near-duplicate group: given the before
set's variants (every copy, mirrored, cropped or re-encoded), a generation's distance to an image is
its distance to the nearest of the image's variants, so a model that reproduces a cropped copy
extracts that image too (#26; the calibration's neighbourhood stays over unique images, as §1 asks).
For every training image: its duplicate count k, how many generations landed
nearest to it, its best generation, and whether it was extracted. Counts are of unique training
images, never of generations (§2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from attack.distance import (
    ALPHA,
    CALIBRATED_THRESHOLDS,
    DELTA,
    NEIGHBOURS,
    as_float,
    calibrated_l2,
    l2,
    neighbourhood_l2,
    tiled_l2,
)

BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-19", 5, 19), ("20+", 20, 10**12))


def bucket_of(k: int) -> str:
    return next(name for name, lo, hi in BUCKETS if lo <= k <= hi)


def _label(t: float) -> str:
    return {1 / 3: "1/3", 0.5: "0.5", 1.0: "1.0"}.get(t, f"{t:g}")


@dataclass
class Extraction:
    generations: pl.DataFrame  # one row per generation
    images: pl.DataFrame  # one row per reference (training) image
    settings: dict[str, Any]

    def counts(self) -> dict[str, Any]:
        """Unique training images extracted, by criterion and duplicate bucket, and continuous signals."""
        out: dict[str, Any] = {"by_criterion": {}, "continuous": {}}
        criteria = [f"calibrated<={_label(t)}" for t in CALIBRATED_THRESHOLDS] + [f"l2<={DELTA:g}"]
        for c in criteria:
            col = f"extracted[{c}]"
            row = {"total": int(self.images[col].sum())}
            for name, _, _ in BUCKETS:
                row[name] = int(self.images.filter(pl.col("bucket") == name)[col].sum())
            out["by_criterion"][c] = row
        g = self.generations
        n = max(g.height, 1)
        cont = out["continuous"]
        cont["generations"] = g.height
        cont["share_nearest_duplicated"] = round(float((g["nearest_k"] > 1).sum()) / n, 4)
        cont["share_nearest_by_bucket"] = {
            name: round(float((g["nearest_bucket"] == name).sum()) / n, 4) for name, _, _ in BUCKETS
        }
        imgs = self.images
        cont["images_by_bucket"] = {name: int((imgs["bucket"] == name).sum()) for name, _, _ in BUCKETS}
        cont["images_hit_by_bucket"] = {
            name: int(imgs.filter((pl.col("bucket") == name) & (pl.col("times_nearest") > 0)).height)
            for name, _, _ in BUCKETS
        }
        cont["median_best_calibrated_by_bucket"] = {
            name: _round(imgs.filter(pl.col("bucket") == name)["best_calibrated"].median())
            for name, _, _ in BUCKETS
        }
        cont["min_calibrated"] = _round(g["calibrated"].min())
        return out


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 4)


def closest_generation_l2(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per training image, the normalized l2 to its closest generation (flattened float32 rows)."""
    import faiss

    index = faiss.IndexFlatL2(gen.shape[1])
    index.add(gen)
    dist, _ = index.search(ref, 1)
    return np.sqrt(np.maximum(dist[:, 0], 0) / gen.shape[1])


def nearest_copies(
    generations: np.ndarray, variants: np.ndarray, variant_of: np.ndarray, n_reference: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per generation, its nearest variant (exact FAISS search); per reference image, the l2 from its
    closest variant to its closest generation (the primary score's distance)."""
    import faiss

    gen = as_float(generations).reshape(len(generations), -1).astype(np.float32)
    var = as_float(variants).reshape(len(variants), -1).astype(np.float32)
    index = faiss.IndexFlatL2(var.shape[1])
    index.add(var)
    _, nearest = index.search(gen, 1)
    closest = np.full(n_reference, np.inf)
    np.minimum.at(closest, np.asarray(variant_of, dtype=np.int64), closest_generation_l2(gen, var))
    return nearest[:, 0], closest


def extract(
    generations: np.ndarray,
    prompts: list[str],
    reference_images: np.ndarray,
    reference_keys: list[str],
    k: np.ndarray,
    threshold: float = 1 / 3,
    variants: np.ndarray | None = None,
    variant_of: np.ndarray | None = None,
) -> Extraction:
    """``variants`` (every training copy) and ``variant_of`` (the reference index of each) widen the
    search from the representatives to every copy; without them the reference images are searched."""
    if variants is None or variant_of is None:
        variants, variant_of = reference_images, np.arange(len(reference_images))
    if {generations.shape[1:], variants.shape[1:]} != {reference_images.shape[1:]}:
        raise ValueError(
            f"generations are {generations.shape[1:]} but training images {reference_images.shape[1:]}"
        )
    nearest_variant, closest = nearest_copies(generations, variants, variant_of, len(reference_images))
    nearest = np.asarray(variant_of, dtype=np.int64)[nearest_variant]
    plain = l2(generations, variants[nearest_variant])
    tiled = tiled_l2(generations, variants[nearest_variant])
    neighbourhood, used = neighbourhood_l2(reference_images, NEIGHBOURS)
    calibrated = calibrated_l2(plain, neighbourhood[nearest], ALPHA)
    gen_df = pl.DataFrame(
        {
            "generation": np.arange(len(generations)),
            "prompt": prompts,
            "nearest_key": [reference_keys[i] for i in nearest],
            "nearest_index": nearest,
            "nearest_k": k[nearest].astype(np.int64),
            "nearest_bucket": [bucket_of(int(v)) for v in k[nearest]],
            "l2": plain,
            "tiled_l2": tiled,
            "calibrated": calibrated,
        }
    )
    # the paper's three thresholds, and the configured one when it is another: it is counted, not a label
    thresholds = sorted(set(CALIBRATED_THRESHOLDS) | {float(threshold)})
    for t in thresholds:
        gen_df = gen_df.with_columns((pl.col("calibrated") <= t).alias(f"extracted[calibrated<={_label(t)}]"))
    gen_df = gen_df.with_columns((pl.col("l2") <= DELTA).alias(f"extracted[l2<={DELTA:g}]"))
    flags = [c for c in gen_df.columns if c.startswith("extracted[")]
    best = (
        gen_df.sort("calibrated")
        .group_by("nearest_index", maintain_order=True)
        .agg(
            pl.len().alias("times_nearest"),
            pl.col("generation").first().alias("best_generation"),
            pl.col("calibrated").first().alias("best_calibrated"),
            pl.col("l2").first().alias("best_l2"),
            pl.col("tiled_l2").first().alias("best_tiled_l2"),
            *[pl.col(f).any().alias(f) for f in flags],
        )
    )
    img_df = (
        pl.DataFrame(
            {
                "index": np.arange(len(reference_keys)),
                "key": reference_keys,
                "k": k.astype(np.int64),
                "bucket": [bucket_of(int(v)) for v in k],
                "neighbourhood_l2": neighbourhood,
                # attack.md §6's primary score: the image's best calibrated l2 over every generation
                # (not only those whose nearest training image it is)
                "closest_l2": closest,
                "primary_score": calibrated_l2(closest, neighbourhood, ALPHA),
            }
        )
        .join(best, left_on="index", right_on="nearest_index", how="left")
        .with_columns(pl.col("times_nearest").fill_null(0), *[pl.col(f).fill_null(False) for f in flags])
    )
    settings = {
        "distance": "normalized l2 in [0,1] pixel space (attack.md §1)",
        "alpha": ALPHA,
        "neighbours_requested": NEIGHBOURS,
        "neighbours_used": used,
        "neighbourhood_centre": "the training image x (not the generation)",
        "calibrated_thresholds": [_label(t) for t in thresholds],
        "primary_threshold": _label(threshold),
        "delta_l2": DELTA,
        "tiles": "4x4",
        "reference_images": len(reference_keys),
        "searched_variants": len(variants),
    }
    if used < NEIGHBOURS:
        settings["note"] = (
            f"fewer than {NEIGHBOURS + 1} training images: the neighbourhood uses all {used} others"
        )
    return Extraction(gen_df, img_df, settings)
