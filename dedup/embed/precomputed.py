"""Released embeddings (clip-retrieval's img_emb/*.npy + metadata/*.parquet) joined to our samples by
key, else by URL, for ``--from-precomputed``: refused unless they cover every downloaded image or the
rest is embedded (``--embed-missing``); pickles are never loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from dedup.core.config import EmbedConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir


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
