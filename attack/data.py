"""Training images for the attack: read from WebDataset shards, centre-cropped, resized, in memory.

``attack_sets`` builds the three sets the before/after protocol needs (attack.md §4): the "before"
training set (as downloaded, duplicates included), the "after" set (as deduplicated) and the
reference set both models are judged against: the unique images of the before set (one per
near-duplicate group), each with its duplicate count k in the before set.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir, shards_in, tar_in
from dedup.core.shards import iter_samples


@dataclass
class ImageSet:
    images: np.ndarray  # (n, H, W, 3) uint8
    keys: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keys: list[str]) -> ImageSet:
        where = {k: i for i, k in enumerate(self.keys)}
        idx = [where[k] for k in keys]
        return ImageSet(self.images[idx], [self.keys[i] for i in idx], [self.captions[i] for i in idx])


def square(image: Image.Image, resolution: int) -> np.ndarray:
    """Centre-crop to a square and resize with area averaging."""
    im = image.convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BOX)
    return np.asarray(im, dtype=np.uint8)


def shard_folder(path: Path, stage: str) -> Path:
    """A folder of shards, or a work directory (its download/ for "before", dedup/ for "after")."""
    if shards_in(path):
        return path
    work = WorkDir(path)
    folder = work.download_dir if stage == "before" else work.dedup_dir
    if not shards_in(folder):
        raise UserError(
            f"{path}: no shards here or in {folder.name}/ (run the pipeline's earlier stages first)"
        )
    return folder


def read_images(folder: Path, resolution: int, keys: set[str] | None = None) -> ImageSet:
    images, out_keys, captions = [], [], []
    for shard in shards_in(folder):
        for sample in iter_samples(tar_in(folder, shard)):
            if keys is not None and sample.key not in keys:
                continue
            data = sample.image
            if data is None:
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = ImageOps.exif_transpose(im)
                    arr = square(im, resolution)
            except Exception:
                continue
            images.append(arr)
            out_keys.append(sample.key)
            captions.append(sample.caption or "")
    if not images:
        raise UserError(f"{folder}: no decodable images")
    # key order: shards hold samples in download-completion order, which must not change the model
    order = sorted(range(len(out_keys)), key=out_keys.__getitem__)
    return ImageSet(np.stack(images)[order], [out_keys[i] for i in order], [captions[i] for i in order])


@dataclass
class AttackSets:
    before: ImageSet
    after: ImageSet
    reference: ImageSet  # unique images of the before set
    k: np.ndarray  # duplicate count in the before set, per reference image
    note: str
    group_of: dict[str, int] = field(default_factory=dict)  # training key -> its reference image's index
    held_out: ImageSet | None = None  # singletons no model trains on (membership inference's non-members)


def _groups(before: Path, clusters: Path | None) -> pl.DataFrame:
    if clusters is None:
        guess = WorkDir(before).clusters
        clusters = guess if guess.exists() else None
    if clusters is None:
        raise UserError(
            f"{before}: no cluster/clusters.parquet to tell duplicates apart; run `dedup cluster` first "
            "or pass --clusters"
        )
    return pl.read_parquet(clusters).select("key", "cluster_id", "cluster_size", "is_representative")


def _limit(
    groups: pl.DataFrame, max_distinct: int | None, seed: int, holdout: int = 0
) -> tuple[pl.DataFrame, str, list[str]]:
    """At most ``max_distinct`` groups: every duplicated group, and singletons sampled with ``seed``;
    first, ``holdout`` singletons are set aside that no model trains on (their keys are returned)."""
    sizes = groups.group_by("cluster_id").agg(pl.len().alias("n")).sort("cluster_id")
    single = sizes.filter(pl.col("n") == 1)["cluster_id"].to_numpy()
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    if holdout:
        held = set(rng.choice(single, size=min(holdout, len(single)), replace=False).tolist())
        single = np.array([c for c in single if c not in held], dtype=single.dtype)
    held_keys = groups.filter(pl.col("cluster_id").is_in(sorted(held)))["key"].sort().to_list()
    trainable = sizes.height - len(held)
    if max_distinct is None or trainable <= max_distinct:
        kept = groups.filter(~pl.col("cluster_id").is_in(sorted(held)))
        note = f"{len(held)} singletons held out of training (membership inference)" if held else ""
        return kept, note, held_keys
    dup = sizes.filter(pl.col("n") > 1)["cluster_id"].to_list()
    room = max(0, max_distinct - len(dup))
    chosen = set(dup) | set(rng.choice(single, size=min(room, len(single)), replace=False).tolist())
    note = (
        f"trained on {len(chosen)} of {sizes.height} near-duplicate groups: all {len(dup)} duplicated "
        f"groups and {len(chosen) - len(dup)} sampled singletons (max_distinct {max_distinct})"
    )
    if held:
        note += f"; {len(held)} other singletons held out of training (membership inference)"
    return groups.filter(pl.col("cluster_id").is_in(sorted(chosen))), note, held_keys


def _reference(before_set: ImageSet, groups: pl.DataFrame) -> tuple[ImageSet, np.ndarray, dict[str, int]]:
    present = groups.filter(pl.col("key").is_in(before_set.keys))
    k_by_cluster = present.group_by("cluster_id").agg(pl.len().alias("k"))
    reps = present.filter(pl.col("is_representative")).join(k_by_cluster, on="cluster_id").sort("key")
    index_of_cluster = {c: i for i, c in enumerate(reps["cluster_id"].to_list())}
    group_of = {
        k: index_of_cluster[c]
        for k, c in present.select("key", "cluster_id").iter_rows()
        if c in index_of_cluster
    }
    return before_set.subset(reps["key"].to_list()), reps["k"].to_numpy(), group_of


def reference_set(
    before: Path,
    resolution: int,
    clusters: Path | None = None,
    max_distinct: int | None = None,
    seed: int = 0,
) -> tuple[ImageSet, np.ndarray, str]:
    """The unique images of a training set (one per near-duplicate group) and their duplicate counts."""
    groups, note, _ = _limit(_groups(before, clusters), max_distinct, seed)
    before_set = read_images(shard_folder(before, "before"), resolution, set(groups["key"].to_list()))
    reference, k, _ = _reference(before_set, groups)
    return reference, k, note


def attack_sets(
    before: Path,
    after: Path,
    resolution: int,
    clusters: Path | None = None,
    max_distinct: int | None = None,
    seed: int = 0,
    holdout: int = 0,
) -> AttackSets:
    """The before, after and reference sets; ``max_distinct`` bounds the number of near-duplicate groups
    (all duplicated groups are kept, singletons are sampled) so a small budget still trains to memorize;
    ``holdout`` singletons are read apart and trained on by no model (membership inference)."""
    groups, note, held_keys = _limit(_groups(before, clusters), max_distinct, seed, holdout)
    wanted = set(groups["key"].to_list())
    before_set = read_images(shard_folder(before, "before"), resolution, wanted)
    after_set = read_images(shard_folder(after, "after"), resolution, wanted)
    reference, k, group_of = _reference(before_set, groups)
    held = read_images(shard_folder(before, "before"), resolution, set(held_keys)) if held_keys else None
    return AttackSets(before_set, after_set, reference, k, note, group_of, held)
