"""Black-box generate-and-filter (attack.md §3; Carlini et al. §4.2), on any generator.

1. Candidates: the captions of the most-duplicated groups the cluster stage found.
2. For each caption, K generations with different seeds.
3. A graph over them: an edge where the tiled l2 of two generations is below tau (setting, 0.15).
   The caption is flagged as memorized when the largest clique has at least m members (paper: 10 of
   500; here m = max(3, ceil(10 K / 500)) unless set, and both are recorded).
4. Verification: the clique's medoid against the caption's training images; extracted when l2 <= 0.15.

Generations with almost no detail (mean absolute neighbour difference below ``min_detail``) are left
out of the graph: flat or dark images are near-identical to each other without being memorized
(issue #6's prototype saw cliques of exactly those). Each caption's result is saved as it completes,
so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from tqdm import tqdm

from attack.clique import largest_clique
from attack.data import read_images, shard_folder, square
from attack.distance import DELTA, as_float, l2, tiled_l2
from attack.extract import BUCKETS, bucket_of
from attack.layout import GenerateFilterDir
from dedup.cluster.stage import load_clusters
from dedup.core.errors import UserError
from dedup.core.files import atomic_path, write_json
from dedup.core.layout import WorkDir

TAU = 0.15  # attack.md §3 (setting; not published): default 0.15


def candidates(work: WorkDir, top: int) -> pl.DataFrame:
    """The ``top`` most-duplicated groups: duplicate count, the kept sample, its caption and the variants."""
    clusters = load_clusters(work)
    meta = pl.concat(
        [pl.read_parquet(work.metadata(s), columns=["key", "caption"]) for s in work.download_shards()]
    )
    df = clusters.join(meta, on="key", how="left")
    groups = (
        df.group_by("cluster_id")
        .agg(
            pl.len().alias("duplicate_count"),
            pl.col("key").filter(pl.col("is_representative")).first().alias("representative_key"),
            pl.col("caption").filter(pl.col("is_representative")).first().alias("caption"),
            pl.col("caption").unique(maintain_order=True).alias("caption_variants"),
            pl.col("key").sort().alias("keys"),
        )
        .sort(["duplicate_count", "cluster_id"], descending=[True, False])
        .head(top)
        .with_row_index("rank")
    )
    return groups.with_columns(pl.col("rank").cast(pl.Int64))


def default_m(k: int) -> int:
    return max(3, math.ceil(10 * k / 500))


def detail(images: np.ndarray) -> np.ndarray:
    x = as_float(images).mean(axis=-1)
    return (
        np.abs(np.diff(x, axis=-2)).mean(axis=(-2, -1)) + np.abs(np.diff(x, axis=-1)).mean(axis=(-2, -1))
    ) / 2


def pairwise_tiled(images: np.ndarray) -> np.ndarray:
    n = len(images)
    d = np.zeros((n, n))
    for i in range(n - 1):
        d[i, i + 1 :] = tiled_l2(images[i][None], images[i + 1 :])
    return d + d.T


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([square(Image.fromarray(im), size) for im in images])


@dataclass
class Settings:
    k: int
    tau: float = TAU
    m: int | None = None
    size: int | None = None  # comparison resolution; None: the generator's, capped at 128
    min_detail: float = 0.01
    seed: int = 0

    def resolved_m(self) -> int:
        return self.m if self.m is not None else default_m(self.k)


def filter_caption(
    generations: np.ndarray, training: np.ndarray, settings: Settings
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """The clique test and its verification for one caption: (record, medoid, nearest training image)."""
    m = settings.resolved_m()
    record: dict[str, Any] = {"generated": len(generations), "m": m}
    if len(generations) == 0:
        return (
            {**record, "clique": 0, "flagged": False, "verified": False, "status": "no generations"},
            None,
            None,
        )
    size = settings.size or min(128, generations.shape[1])
    size -= size % 4
    gens = _resize(generations, size) if generations.shape[1:3] != (size, size) else generations
    keep = np.flatnonzero(detail(gens) >= settings.min_detail)
    record["low_detail_dropped"] = int(len(gens) - len(keep))
    if len(keep) == 0:
        return (
            {**record, "clique": 0, "flagged": False, "verified": False, "status": "all low detail"},
            None,
            None,
        )
    dist = pairwise_tiled(gens[keep])
    local = largest_clique(dist < settings.tau)
    medoid = int(keep[local[int(np.argmin(dist[np.ix_(local, local)].sum(axis=1)))]])
    record.update(clique=len(local), medoid=medoid, flagged=len(local) >= m, compare_size=size)
    nearest = None
    if len(training):
        train = _resize(training, size) if training.shape[1:3] != (size, size) else training
        dists = l2(gens[medoid][None], train)
        best = int(np.argmin(dists))
        nearest = train[best]
        record.update(
            nearest_index=best, l2=float(dists[best]), tiled_l2=float(tiled_l2(gens[medoid], nearest))
        )
        record["verified"] = bool(record["flagged"] and record["l2"] <= DELTA)
    else:
        record.update(l2=None, tiled_l2=None, verified=False)
    record["status"] = "verified" if record["verified"] else "flagged" if record["flagged"] else "not flagged"
    return record, gens[medoid], nearest


def run_generate_filter(
    candidates_file: Path,
    generator: Any,
    settings: Settings,
    out: Path,
    train: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    if not candidates_file.exists():
        raise UserError(f"{candidates_file}: no such candidates file; run `dedup attack candidates` first")
    cands = pl.read_parquet(candidates_file)
    missing = {"cluster_id", "caption", "duplicate_count", "keys"} - set(cands.columns)
    if missing:
        raise UserError(f"{candidates_file}: missing column(s) {', '.join(sorted(missing))}")
    work_root = train if train is not None else _workdir_of(candidates_file)
    folder = shard_folder(work_root, "before") if work_root is not None else None
    paths = GenerateFilterDir(out)
    per_caption = paths.captions
    per_caption.mkdir(parents=True, exist_ok=True)
    identity = generator_identity(generator)
    todo = []
    for row in cands.iter_rows(named=True):
        run_key = caption_run_key(settings, identity, row)
        record_path = per_caption / f"{row['cluster_id']}.json"
        if not (record_path.exists() and _record_key(record_path) == run_key):
            todo.append((row, run_key))  # else made by this generator, with these settings, for these images
    training_images = TrainingImages(folder, {k for row, _ in todo for k in row["keys"] or []})
    for row, run_key in tqdm(todo, desc="captions", disable=not progress):
        record_path = per_caption / f"{row['cluster_id']}.json"
        seed = settings.seed + 1000 * int(row.get("rank", row["cluster_id"]))
        gens = generator.generate(row["caption"] or "", settings.k, seed, cluster_id=row["cluster_id"])
        training = np.zeros((0, 1, 1, 3), np.uint8)
        if folder is not None and len(gens):
            res = settings.size or min(128, gens.shape[1])
            training = training_images.of(row["keys"] or [], res - res % 4)
        record, medoid, nearest = filter_caption(gens, training, settings)
        record.update(
            run_key=run_key,
            cluster_id=row["cluster_id"],
            caption=row["caption"],
            duplicate_count=row["duplicate_count"],
            bucket=bucket_of(int(row["duplicate_count"])),
        )
        for name, image in (("medoid", medoid), ("nearest", nearest)):
            if image is not None:
                with atomic_path(per_caption / f"{row['cluster_id']}_{name}.png") as tmp:
                    Image.fromarray(image).save(tmp, format="PNG")
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record))
    return summarize(cands, per_caption, settings, generator, out)


class TrainingImages:
    """The candidates' training images, read in one pass over the shards (per comparison size) and
    handed out per caption: reading the shards once per caption cost captions x dataset."""

    def __init__(self, folder: Path | None, keys: set[str]) -> None:
        self.folder, self.keys = folder, keys
        self._size: int | None = None
        self._by_key: dict[str, np.ndarray] = {}

    def of(self, keys: list[str], size: int) -> np.ndarray:
        if self.folder is None or not self.keys:
            return np.zeros((0, size, size, 3), np.uint8)
        if self._size != size:
            try:
                found = read_images(self.folder, size, self.keys)
                self._by_key = dict(zip(found.keys, found.images, strict=True))
            except UserError:  # none of them decodes: nothing to verify against
                self._by_key = {}
            self._size = size
        picked = [self._by_key[k] for k in sorted(keys) if k in self._by_key]
        return np.stack(picked) if picked else np.zeros((0, size, size, 3), np.uint8)


def generator_identity(generator: Any) -> str:
    """What makes a generator's images: its name, and for files (a checkpoint, a folder of images)
    their size and modification time, so a retrained checkpoint under the same path is not reused."""
    name = str(getattr(generator, "name", generator)) + str(getattr(generator, "identity_extra", ""))
    for attr in ("checkpoint", "folder", "path"):
        value = getattr(generator, attr, None)
        if value is not None and Path(value).exists():
            p = Path(value)
            stamp = [
                (str(q.relative_to(p)) if p.is_dir() else q.name, q.stat().st_size, q.stat().st_mtime_ns)
                for q in ([p] if p.is_file() else sorted(p.rglob("*")))
            ]
            return f"{name}|{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]}"
    return name


def caption_run_key(settings: Settings, identity: str, row: dict[str, Any]) -> str:
    """A digest of everything one caption's record depends on: a rerun reuses a record only when
    every setting (K, tau, m, size, detail floor, seed), the generator, the caption and its training
    images are the same."""
    blob = json.dumps(
        {
            "settings": dataclasses.asdict(settings),
            "generator": identity,
            "caption": row["caption"],
            "keys": sorted(row["keys"] or []),
            "rank": row.get("rank"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _record_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("run_key")
    except (OSError, json.JSONDecodeError):
        return None


def _workdir_of(candidates_file: Path) -> Path | None:
    """Candidates made by `dedup attack candidates` live in WORKDIR/attack/."""
    root = candidates_file.resolve().parent.parent
    return root if WorkDir(root).download_dir.is_dir() else None


def summarize(cands: pl.DataFrame, per_caption: Path, settings: Settings, generator: Any, out: Path) -> dict:
    records = [
        json.loads((per_caption / f"{c}.json").read_text())
        for c in cands["cluster_id"].to_list()
        if (per_caption / f"{c}.json").exists()
    ]
    table = pl.DataFrame(records, infer_schema_length=None) if records else pl.DataFrame()
    with atomic_path(GenerateFilterDir(out).results) as tmp:
        table.write_parquet(tmp)
    by_bucket = {}
    for name, _, _ in BUCKETS:
        part = [r for r in records if r["bucket"] == name]
        by_bucket[name] = {
            "captions": len(part),
            "flagged": sum(r["flagged"] for r in part),
            "verified": sum(r["verified"] for r in part),
        }
    summary = {
        "generator": getattr(generator, "name", str(generator)),
        "settings": {
            "K": settings.k,
            "tau": settings.tau,
            "m": settings.resolved_m(),
            "m_paper": "10 of K=500",
            "grid": "4x4 tiles",
            "distance": "tiled l2 (attack.md §1, §3)",
            "compare_size": settings.size or "generator resolution, at most 128",
            "min_detail": settings.min_detail,
            "verify_l2": DELTA,
        },
        "captions": len(records),
        "flagged": sum(r["flagged"] for r in records),
        "verified": sum(r["verified"] for r in records),
        "by_bucket": by_bucket,
    }
    write_json(GenerateFilterDir(out).summary, summary)
    return summary


def format_generate_filter(s: dict[str, Any]) -> str:
    st = s["settings"]
    lines = [
        f"{s['captions']} captions, {st['K']} generations each ({s['generator']}): {s['flagged']} flagged "
        f"(largest clique >= m={st['m']} at tiled l2 < tau={st['tau']}), {s['verified']} verified (l2 <= "
        f"{st['verify_l2']} to a training image)",
        f"  {'copies':<8}{'captions':>9}{'flagged':>9}{'verified':>9}",
    ]
    for name, v in s["by_bucket"].items():
        lines.append(f"  {name:<8}{v['captions']:>9}{v['flagged']:>9}{v['verified']:>9}")
    return "\n".join(lines)
