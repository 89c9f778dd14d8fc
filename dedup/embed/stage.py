"""Embed stage: per download shard, an ``.npy`` of float16 L2-normalised embeddings and a metadata parquet.

Outputs follow clip-retrieval's layout (``img_emb/``, ``metadata/``); row i of the ``.npy`` is row i of
the parquet, which is sample i of the tar. Every sample gets a row: one that cannot be decoded keeps
its key, hashes of its bytes and a ``status`` saying why, with a zero vector. A shard is done when
its marker, both files and their row counts agree; files are written under temporary names and
renamed, so after a kill -9 a rerun finds only complete shards and redoes the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from dedup.core.config import EmbedConfig
from dedup.core.errors import UserError
from dedup.core.files import atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import read_marker, write_marker
from dedup.core.shards import input_samples
from dedup.core.stage import Advance, Plan, Resources, Stage, Unit, run_stage
from dedup.embed.precomputed import PrecomputedIndex, check_coverage
from dedup.embed.samples import OK, guarded, prefetch_batches, prepare_sample

if TYPE_CHECKING:
    from dedup.core.executors import Executor


METADATA_SCHEMA = {
    "key": pl.String,
    "shard": pl.Int32,
    "row": pl.Int32,
    "url": pl.String,
    "caption": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "original_width": pl.Int32,
    "original_height": pl.Int32,
    "bytes": pl.Int64,
    "sha256": pl.String,
    "phash": pl.UInt64,
    "phash_mirror": pl.UInt64,
    "status": pl.String,
    "tar_start": pl.Int64,
    "tar_end": pl.Int64,
    "local_count": pl.Int32,  # ORB descriptors stored for this sample in embed/local/
}
VIEW = "exif-trim-border-v3"


def _stage_config(config: EmbedConfig) -> dict[str, Any]:
    # Workers and batch size change speed, not results: leave them out of the marker's config.
    # ``view`` names how an image is looked at before hashing and embedding (borders trimmed since
    # v2): embeddings made another way are redone, never mixed with new ones.
    return {**config.model_dump(exclude={"workers", "batch_size", "device"}), "view": VIEW}


def shard_done(work: WorkDir, shard: int, config: EmbedConfig) -> bool:
    from dedup.core.markers import config_hash

    marker = read_marker(work, "embed", shard)
    emb, meta = work.img_emb(shard), work.metadata(shard)
    if marker is None or marker.get("config_hash") != config_hash(_stage_config(config)):
        return False
    if marker.get("input") != work.input_identity(shard):
        return False  # the shard was downloaded (or imported) again since: its embeddings are stale
    if not (emb.exists() and meta.exists()):
        return False
    try:
        rows_emb = np.load(emb, mmap_mode="r").shape[0]
        rows_meta = pq.ParquetFile(meta).metadata.num_rows
    except (OSError, ValueError):
        return False
    if config.local_features and not work.local_features(shard).exists():
        return False
    return rows_emb == rows_meta == marker.get("rows")


def check_complete(work: WorkDir, shard: int, tar: Path, keys: list[str]) -> None:
    """Every sample the download parquet says reached the tar was read from it: a tar cut short at a
    member boundary reads without error, and its lost samples must not become silent decode_failed rows."""
    rows = pl.read_parquet(work.download_parquet(shard), columns=["key", "status"])
    expected = set(rows.filter(pl.col("status") == "success")["key"].to_list())
    missing = sorted(expected - set(keys))
    if missing:
        raise UserError(
            f"{tar}: truncated or damaged: {len(missing)} of {len(expected)} downloaded samples are not "
            f"in it (first: {missing[0]}); download or import the shard again"
        )


def check_embeddings(work: WorkDir) -> None:
    """Each shard's embeddings readable, one per metadata row, and finite, before cluster uses them."""
    for shard in work.download_shards():
        path = work.img_emb(shard)
        try:
            arr = np.load(path, mmap_mode="r")
            rows = pq.ParquetFile(work.metadata(shard)).metadata.num_rows
        except (OSError, ValueError, EOFError) as err:
            raise UserError(
                f"{path}: damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                f"delete it and run `dedup embed {work.root}` to redo the shard"
            ) from None
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise UserError(
                f"{path}: {arr.shape[0] if arr.ndim else 0} vectors for {rows} metadata rows; delete it and "
                f"run `dedup embed {work.root}` to redo the shard"
            )
        for lo in range(0, arr.shape[0], 65_536):
            if not np.isfinite(arr[lo : lo + 65_536]).all():
                raise UserError(
                    f"{path}: holds NaN or infinite values; delete it and run `dedup embed {work.root}`"
                )


def embed_shard(
    work: WorkDir,
    shard: int,
    embedder: Any,
    config: EmbedConfig,
    lookup: PrecomputedIndex | None = None,
    advance: Callable[[int], Any] | None = None,
) -> int:
    prepare = embedder.prepare if embedder is not None else None
    rows: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    locals_: list[np.ndarray] = []
    dim = lookup.dim if lookup is not None else embedder.dim
    tar = work.input_tar(shard)
    for batch in guarded(
        tar,
        prefetch_batches(
            input_samples(tar),
            lambda s: prepare_sample(s, prepare, config.local_features),
            config.batch_size,
            config.workers,
        ),
    ):
        out = np.zeros((len(batch), dim), dtype=np.float32)
        ok = [i for i, (facts, _) in enumerate(batch) if facts["status"] == OK]
        if lookup is not None:
            vecs, found = lookup.find([batch[i][0] for i in ok])
            missing = [i for j, i in enumerate(ok) if not found[j]]
            for j, i in enumerate(ok):
                out[i] = vecs[j]
            if missing and embedder is not None:  # --embed-missing: the same model embeds the rest
                out[missing] = embedder.embed(np.stack([batch[i][1] for i in missing]))
            else:  # the plan refused a source with uncovered images; this is the last guard
                for i in missing:
                    batch[i][0]["status"] = "no_precomputed_embedding"
        elif ok:
            out[ok] = embedder.embed(np.stack([batch[i][1] for i in ok]))
        for i in np.flatnonzero(~np.isfinite(out).all(axis=1)):
            batch[i][0]["status"] = "nonfinite_embedding"  # never searched with NaN or inf
            out[i] = 0.0
        for facts, _ in batch:
            facts["shard"] = shard
            facts["row"] = len(rows)
            local = facts.pop("_local", None)
            if local is not None and facts["status"] == OK:
                locals_.append(local)
            else:
                facts["local_count"] = 0
            rows.append(facts)
        chunks.append(out.astype(np.float16))
        if advance is not None:
            advance(len(batch))
    check_complete(work, shard, tar, [r["key"] for r in rows])
    emb = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float16)
    meta = pl.DataFrame(rows, schema=METADATA_SCHEMA) if rows else pl.DataFrame(schema=METADATA_SCHEMA)
    with atomic_path(work.img_emb(shard)) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    if config.local_features:
        from dedup.embed.localfeatures import EMPTY

        with atomic_path(work.local_features(shard)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(locals_) if locals_ else EMPTY)
    with atomic_path(work.metadata(shard)) as tmp:
        meta.write_parquet(tmp)
    statuses = meta.group_by("status").len().rows() if meta.height else []
    write_marker(
        work,
        "embed",
        shard,
        _stage_config(config),
        rows=meta.height,
        input=work.input_identity(shard),
        ok=int((meta["status"] == OK).sum()) if meta.height else 0,
        statuses={s: n for s, n in statuses},
        made_by=_describe(embedder, lookup),  # the summary needs it when a rerun embeds nothing
    )
    return meta.height


def _describe(embedder: Any, lookup: PrecomputedIndex | None) -> dict[str, Any]:
    """What made the vectors, as the summary and the cluster stage record it."""
    if lookup is not None:
        return {
            "model": f"precomputed:{lookup.root}",
            "dim": lookup.dim,
            "device": "none",
            "precision": "none",
        }
    return {
        "model": embedder.model_id,
        "dim": embedder.dim,
        "device": embedder.device,
        "precision": embedder.precision,
    }


class EmbedStage(Stage):
    """Units: input shards. Setup loads the model once per worker; a unit writes one shard's
    embeddings, hashes and metadata, then its marker."""

    name = "embed"
    unit_name = "shard"

    def __init__(self, config: EmbedConfig) -> None:
        self.config = config

    def resources(self) -> Resources:
        # the decode threads run beside the model; a GPU is asked for only when the config says cuda
        return Resources(cpus=float(self.config.workers), gpus=1.0 if self.config.device == "cuda" else 0.0)

    def inputs(self, work: WorkDir) -> list[Path]:
        return [work.input_tar(s) for s in work.download_shards()]

    def outputs(self, work: WorkDir) -> list[Path]:
        per_shard = [(work.img_emb(s), work.metadata(s)) for s in work.download_shards()]
        return [p for pair in per_shard for p in pair] + [work.embed_summary]

    def plan(self, work: WorkDir) -> Plan:
        shards = work.download_shards()
        if not shards:
            raise UserError(f"{work.download_dir}: no downloaded shards; run `dedup download` first")
        work.check_inputs()
        if self.config.from_precomputed:  # a bad folder or missing vectors fail here, not on a worker
            check_coverage(PrecomputedIndex(Path(self.config.from_precomputed)), work, self.config)
        remove_stale_temporaries(work.embed_dir)
        return Plan([Unit(s, size=read_json(work.download_stats(s)).get("successes", 0)) for s in shards])

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return shard_done(work, unit.index, self.config)

    def setup(self, work: WorkDir) -> tuple[Any, PrecomputedIndex | None]:
        from dedup.embed.embedders import make_embedder

        if self.config.from_precomputed:
            lookup = PrecomputedIndex(Path(self.config.from_precomputed))
            embedder = make_embedder(self.config) if self.config.embed_missing else None
            if embedder is not None and embedder.dim != lookup.dim:
                raise UserError(
                    f"{lookup.root}: vectors of width {lookup.dim}, but --embed-missing's model makes "
                    f"{embedder.dim}; set --model/--pretrained to the model that made them"
                )
            return embedder, lookup
        return make_embedder(self.config), None

    def process(
        self, work: WorkDir, unit: Unit, state: tuple[Any, PrecomputedIndex | None], advance: Advance = None
    ) -> dict[str, Any]:
        embedder, lookup = state
        images = embed_shard(work, unit.index, embedder, self.config, lookup, advance)
        return {"images": images, **_describe(embedder, lookup)}

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        remove_stale_temporaries(work.embed_dir)  # a unit retried after its worker died left one
        images = sum(r["images"] for r in results)
        made_by = results[0] if results else None
        summary = _summary(work, self.config, made_by, images, seconds, skipped=len(plan.units) - len(todo))
        write_json(work.embed_summary, summary)
        return summary


@locked
def run_embed(
    config: EmbedConfig, work: WorkDir, progress: bool = True, executor: Executor | None = None
) -> dict[str, Any]:
    """Embeddings, hashes and metadata for every input shard not yet done with these settings."""
    return run_stage(EmbedStage(config), work, executor, progress)


def _summary(
    work: WorkDir,
    config: EmbedConfig,
    made_by: dict[str, Any] | None,
    images: int,
    seconds: float,
    skipped: int,
) -> dict[str, Any]:
    previous = read_json(work.embed_summary) if work.embed_summary.exists() else {}
    statuses: dict[str, int] = {}
    total = 0
    recorded: dict[str, Any] = {}
    for shard in work.download_shards():
        marker = read_marker(work, "embed", shard) or {}
        total += marker.get("rows", 0)
        recorded = recorded or marker.get("made_by", {})
        for s, n in marker.get("statuses", {}).items():
            statuses[s] = statuses.get(s, 0) + n
    # a run killed after its last shard and before this summary leaves nothing to embed on rerun:
    # what made the vectors then comes from the shards' markers, not from this run
    source = made_by or recorded or previous
    model, dim = source.get("model"), source.get("dim")
    device, precision = source.get("device"), source.get("precision")
    return {
        "embedder": config.embedder if not config.from_precomputed else "precomputed",
        "model": model,
        "dim": dim,
        "device": device,
        "precision": precision,
        "rows": total,
        "statuses": statuses,
        "run_images": images,
        "run_seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2) if images and seconds > 0 else None,
        "skipped_shards": skipped,
    }


def format_embed_summary(s: dict[str, Any]) -> str:
    ips = f"{s['images_per_second']:.1f}" if s["images_per_second"] else "-"
    bad = {k: v for k, v in s["statuses"].items() if k != OK}
    line = (
        f"embedded {s['run_images']} images in {s['run_seconds']:.1f} s ({ips} images/s) on {s['device']} "
        f"[{s['precision']}] with {s['model']} (dim {s['dim']}); {s['skipped_shards']} shard(s) already done"
    )
    if s["embedder"] == "descriptor":
        line += "\n  weight-free descriptors (no CLIP weights): a standardised colour thumbnail per image"
    if bad:
        line += "\n  not embedded: " + ", ".join(f"{k} x{v}" for k, v in sorted(bad.items()))
    return line
