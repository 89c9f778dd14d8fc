"""Embed stage: per download shard, an ``.npy`` of float16 L2-normalised embeddings and a metadata parquet.

Outputs follow clip-retrieval's layout (``img_emb/``, ``metadata/``); row i of the ``.npy`` is row i of
the parquet, which is sample i of the tar. Every sample gets a row: one that cannot be decoded keeps
its key, hashes of its bytes and a ``status`` saying why, with a zero vector. A shard is done when
its marker, both files and their row counts agree; files are written under temporary names and
renamed, so after a kill -9 a rerun finds only complete shards and redoes the rest.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from dedup.core.config import EmbedConfig
from dedup.core.errors import UserError
from dedup.core.errors import describe as describe_error
from dedup.core.layout import WorkDir, atomic_path, locked, read_json, remove_stale_temporaries, write_json
from dedup.core.markers import read_marker, write_marker
from dedup.core.shards import MAX_IMAGE_AREA, Sample, input_samples
from dedup.core.stage import Advance, Plan, Resources, Stage, Unit, run_stage
from dedup.embed.hashing import phash_pair, sha256, trim_border

if TYPE_CHECKING:
    from dedup.core.executors import Executor

# The header's size is checked against MAX_IMAGE_AREA before decoding; Pillow's warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

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
OK = "ok"
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


def _sample_facts(sample: Sample) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "json" in sample.members:
        try:
            meta = json.loads(sample.members["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    return {
        "key": sample.key,
        "tar_start": sample.start,
        "tar_end": sample.end,
        "url": meta.get("url"),
        "caption": sample.caption if sample.caption is not None else meta.get("caption"),
        "original_width": meta.get("original_width"),
        "original_height": meta.get("original_height"),
    }


def prepare_sample(
    sample: Sample, prepare: Callable[[Image.Image], np.ndarray] | None, local: bool = False
) -> tuple[dict, Any]:
    """Decode, hash and preprocess one sample (runs in a decode thread). Never raises.

    With ``local``, the sample's ORB descriptors ride along in ``facts["_local"]``."""
    facts = _sample_facts(sample)
    facts["local_count"] = 0
    data = sample.image
    facts.update(width=None, height=None, bytes=None, sha256=None, phash=None, phash_mirror=None)
    if data is None:
        facts["status"] = "no_image_member"
        return facts, None
    facts["bytes"] = len(data)
    facts["sha256"] = sha256(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_AREA:  # from the header, before decoding a bomb
                facts["status"] = f"image_too_large: {im.width} x {im.height} pixels"
                return facts, None
            im.load()
            # the image as every viewer shows it: a copy re-saved with rotated pixels and an EXIF
            # orientation tag looks like its original, so it must hash and embed like it
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as err:
        facts["status"] = f"decode_error: {describe_error(err)}"
        return facts, None
    facts["width"], facts["height"] = rgb.size
    rgb = trim_border(rgb)  # a letterboxed or padded copy hashes and embeds like its original
    facts["phash"], facts["phash_mirror"] = phash_pair(rgb)
    if local:
        from dedup.embed.localfeatures import describe

        facts["_local"] = describe(rgb)
        facts["local_count"] = len(facts["_local"])
    facts["status"] = OK
    return facts, (prepare(rgb) if prepare is not None else None)


def prefetch_batches(
    items: Iterable[Any], fn: Callable[[Any], Any], batch_size: int, workers: int
) -> Iterator[list[Any]]:
    """Apply ``fn`` to batches of items in a thread pool, yielding results in input order.

    At most ``2 * workers`` batches are in flight, so decoding runs ahead of the model without holding
    a whole shard in memory.
    """
    it = iter(items)
    batches = iter(lambda: list(islice(it, batch_size)), [])
    if workers <= 0:
        for batch in batches:
            yield [fn(x) for x in batch]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(lambda b: [fn(x) for x in b], batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _guarded(tar: Path, batches: Any) -> Any:
    """The batches of one tar; a damaged archive is a one-line error naming it, not a traceback."""
    try:
        yield from batches
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise UserError(
            f"{tar}: damaged tar ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "download or import the shard again"
        ) from None


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
    for batch in _guarded(
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


def load_embeddings(work: WorkDir) -> tuple[pl.DataFrame, np.ndarray]:
    """All metadata rows and their embeddings, in shard then row order (float32, memory permitting)."""
    metas, embs = [], []
    for shard in work.download_shards():
        if not work.metadata(shard).exists():
            raise UserError(f"{work.metadata(shard)}: missing; run `dedup embed {work.root}` first")
        metas.append(pl.read_parquet(work.metadata(shard)))
        embs.append(np.load(work.img_emb(shard), mmap_mode="r"))
    if not metas:
        raise UserError(f"{work.embed_dir}: no embeddings; run `dedup embed {work.root}` first")
    return pl.concat(metas), np.concatenate([np.asarray(e, dtype=np.float32) for e in embs])


def load_metadata(work: WorkDir) -> pl.DataFrame:
    """All metadata rows, in shard then row order (the row order of every embedding array)."""
    frames = []
    for shard in work.download_shards():
        if not work.metadata(shard).exists():
            raise UserError(f"{work.metadata(shard)}: missing; run `dedup embed {work.root}` first")
        frames.append(pl.read_parquet(work.metadata(shard)))
    if not frames:
        raise UserError(f"{work.embed_dir}: no embeddings; run `dedup embed {work.root}` first")
    return pl.concat(frames)


def embeddings_memmap(work: WorkDir, rows: np.ndarray, out: Path) -> np.ndarray:
    """The embeddings of the given global rows (in the order given), gathered shard by shard into one
    float16 file and memory-mapped, so that RAM holds one shard at a time, never all vectors."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    shards = work.download_shards()
    dim = np.load(work.img_emb(shards[0]), mmap_mode="r").shape[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    dest = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16, shape=(len(rows), dim))
    offset, written = 0, 0
    for shard in shards:
        arr = np.load(work.img_emb(shard), mmap_mode="r")
        lo, hi = np.searchsorted(rows, [offset, offset + len(arr)])
        if hi > lo:
            dest[order[written : written + hi - lo]] = arr[rows[lo:hi] - offset]
            written += hi - lo
        offset += len(arr)
    dest.flush()
    del dest
    return np.load(out, mmap_mode="r")


def local_descriptors(work: WorkDir, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB descriptors of the given global rows and, per descriptor, the position of its row in
    ``rows``; one shard's file in memory at a time. Empty when embed kept none."""
    from dedup.embed.localfeatures import EMPTY

    rows = np.asarray(rows, dtype=np.int64)
    position = {int(r): t for t, r in enumerate(rows)}
    out, owner = [], []
    offset = 0
    for shard in work.download_shards():
        path = work.local_features(shard)
        counts = pl.read_parquet(work.metadata(shard), columns=["local_count"])["local_count"]
        counts = counts.fill_null(0).to_numpy().astype(np.int64)
        if path.exists():
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] != counts.sum():
                raise UserError(
                    f"{path}: {arr.shape[0]} descriptors, metadata says {counts.sum()}; rerun embed"
                )
            starts = np.concatenate([[0], np.cumsum(counts)])
            for local_row in range(len(counts)):
                t = position.get(offset + local_row)
                if t is not None and counts[local_row]:
                    out.append(np.asarray(arr[starts[local_row] : starts[local_row + 1]]))
                    owner.append(np.full(counts[local_row], t, dtype=np.int64))
        offset += len(counts)
    if not out:
        return EMPTY, np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(owner)


def _load_vectors(path: Path) -> np.ndarray:
    """One released .npy, memory-mapped; anything but a 2-D numeric array (no pickles) is refused."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a .npy array ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise UserError(
            f"{path}: want a 2-D numeric array (one row per image), got {getattr(arr, 'shape', '?')}"
        )
    return arr


def check_coverage(lookup: PrecomputedIndex, work: WorkDir, config: EmbedConfig) -> None:
    """Released vectors must cover every downloaded image, or the rest be embedded (--embed-missing):
    an image without a vector would otherwise leave the dataset as if it did not decode."""
    from dedup.download.stage import download_rows

    rows = download_rows(work).filter(pl.col("status") == "success")
    facts = rows.select("key", "url").to_dicts()
    missing = [f["key"] for f, hit in zip(facts, lookup.covers(facts), strict=True) if not hit]
    if missing and not config.embed_missing:
        raise UserError(
            f"{lookup.root}: no vector for {len(missing):,} of {len(facts):,} images (first: {missing[0]}); "
            "add --embed-missing to embed them with the model that made these vectors "
            "(--model/--pretrained), or supply their vectors"
        )


class PrecomputedIndex:
    """Released embeddings in clip-retrieval's layout, joined to our samples by key, else by URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        embs = sorted((root / "img_emb").glob("*.npy"))
        metas = sorted((root / "metadata").glob("*.parquet"))
        if not embs or len(embs) != len(metas):
            raise UserError(
                f"{root}: expected img_emb/*.npy and metadata/*.parquet in equal numbers "
                f"(found {len(embs)} and {len(metas)})"
            )
        self._arrays = [_load_vectors(p) for p in embs]
        dims = {a.shape[1] for a in self._arrays}
        if len(dims) != 1:
            raise UserError(f"{root}/img_emb: arrays of different widths {sorted(dims)}")
        self.dim = dims.pop()
        frames = []
        for i, (meta_path, arr) in enumerate(zip(metas, self._arrays, strict=True)):
            cols = pq.ParquetFile(meta_path).schema_arrow.names
            use = [c for c in ("key", "url") if c in cols]
            if not use:
                raise UserError(f"{meta_path}: needs a 'key' or 'url' column to join on")
            df = pl.read_parquet(meta_path, columns=use)
            if df.height != arr.shape[0]:
                raise UserError(f"{meta_path}: {df.height} rows but {embs[i].name} has {arr.shape[0]}")
            frames.append(df.with_columns(pl.lit(i).alias("_file"), pl.int_range(df.height).alias("_row")))
        self._meta = pl.concat(frames, how="diagonal")
        self._by = "key" if "key" in self._meta.columns and self._meta["key"].null_count() == 0 else "url"

    def covers(self, facts: list[dict[str, Any]]) -> list[bool]:
        """Which samples have a vector (by key, else by URL), without reading the vectors."""
        wanted = pl.Series(self._by, [f.get(self._by) for f in facts], dtype=pl.String)
        return wanted.is_in(self._meta[self._by].cast(pl.String).implode()).to_list()

    def find(self, facts: list[dict[str, Any]]) -> tuple[np.ndarray, list[bool]]:
        wanted = pl.DataFrame({self._by: [f.get(self._by) for f in facts]}, schema={self._by: pl.String})
        hit = (
            wanted.with_row_index("_i")
            .join(self._meta.unique(self._by, keep="first"), on=self._by, how="left")
            .sort("_i")
        )
        out = np.zeros((len(facts), self.dim), dtype=np.float32)
        found = []
        for i, (f, r) in enumerate(zip(hit["_file"].to_list(), hit["_row"].to_list(), strict=True)):
            if f is None:
                found.append(False)
                continue
            out[i] = self._arrays[f][r]
            found.append(True)
        from dedup.embed.embedders import l2_normalize

        return l2_normalize(out), found
