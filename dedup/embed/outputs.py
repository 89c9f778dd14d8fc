"""The embed stage's outputs as later stages read them: metadata rows and vectors in shard then row
order (the row order every embedding array shares), gathered a shard at a time so RAM never holds all
vectors, and the ORB descriptors kept for local-feature candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dedup.core.errors import UserError
from dedup.core.layout import WorkDir


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
