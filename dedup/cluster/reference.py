"""``--against``: samples of this work directory that duplicate a sample of a reference one (a test set,
an earlier release), decided by the same pair decision as self-deduplication; the reference is only
read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dedup.cluster.candidates import embed_info, mirror_view
from dedup.cluster.oracle import pair_oracle
from dedup.cluster.search import Mapper, search
from dedup.cluster.verify import add_images, load_images
from dedup.core.config import ClusterConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.embed.outputs import embeddings_memmap, load_metadata
from dedup.embed.samples import OK


def match_reference(
    config: ClusterConfig,
    work: WorkDir,
    other: Path,
    meta: pl.DataFrame,
    x: np.ndarray,
    unique: np.ndarray,
    u_of_row: np.ndarray,
    t_emb: float,
    t_cand: float,
    executor: Mapper | None = None,
) -> pl.DataFrame:
    """Samples (key) that duplicate a sample of the reference work directory (reference_key, similarity).

    The same bytes, or a candidate pair from the embedding search that the self-deduplication's
    ``PairOracle`` accepts (signals, copy verifier, confirm, derived policy): one decision for both;
    the reference is only read.
    """
    ref, ref_meta, ref_emb = _reference_side(work, other, x)
    ref_keys = ref_meta["key"].to_numpy()
    mirror = mirror_view(str(embed_info(work).get("embedder")), int(x.shape[1]))
    by_sha = dict(zip(ref_meta["sha256"].to_list(), ref_keys.tolist(), strict=True))
    found: dict[str, tuple[str, float]] = {
        key: (by_sha[sha], 1.0)
        for key, sha in zip(meta["key"].to_list(), meta["sha256"].to_list(), strict=True)
        if sha in by_sha
    }
    cand, _ = search(
        ref_emb,
        config.k,
        t_cand,
        config.search,
        queries=x,
        views=[mirror] if mirror else [],
        exact_max=config.exact_max,
        nlist=config.nlist,
        nprobe=config.nprobe,
        reduce_dim=config.reduce_dim,
        block_size=config.block_size,
        mapper=executor,
    )
    if len(cand):
        # the same decision as self-deduplication: reference rows live after this set's unique rows
        oracle, verifier = _reference_oracle(
            config, meta, unique, x, ref_meta, ref_emb, mirror, t_emb, t_cand
        )
        i, j = cand.i.astype(np.int64), len(unique) + cand.j.astype(np.int64)
        if verifier is not None:
            add_images(work, meta, unique, u_of_row, verifier, np.unique(cand.i))
            loaded = load_images(ref, ref_meta, np.unique(cand.j))
            verifier.add_images((len(unique) + int(r), data) for r, data in loaded)
        dup, _, cos = oracle.decide_pairs(i, j)
        keys = meta["key"].to_numpy()
        q_rows = unique[cand.i]
        for t in np.flatnonzero(dup)[np.argsort(-cos[dup], kind="stable")]:
            found.setdefault(str(keys[q_rows[t]]), (str(ref_keys[cand.j[t]]), float(cos[t])))
    return _matches(found)


def _matches(found: dict[str, tuple[str, float]]) -> pl.DataFrame:
    """key -> (reference_key, reference_similarity) as the table the clusters are marked from."""
    return pl.DataFrame(
        {
            "key": list(found),
            "reference_key": [v[0] for v in found.values()],
            "reference_similarity": [v[1] for v in found.values()],
        },
        schema={"key": pl.String, "reference_key": pl.String, "reference_similarity": pl.Float32},
    )


def _reference_side(work: WorkDir, other: Path, x: np.ndarray) -> tuple[WorkDir, pl.DataFrame, np.ndarray]:
    """The reference's embedded rows and their vectors; refused when another model embedded them
    (vectors of two models are not comparable)."""
    ref = WorkDir(other)
    mine, theirs = embed_info(work), embed_info(ref)
    ref_meta_all = load_metadata(ref)
    ok = (ref_meta_all["status"] == OK).to_numpy()
    ref_meta = ref_meta_all.filter(ok)
    ref_emb = embeddings_memmap(ref, np.flatnonzero(ok), work.cluster_dir / "_reference.f16.npy")
    if mine.get("model") != theirs.get("model") or x.shape[1] != ref_emb.shape[1]:
        raise UserError(
            f"{other}: embedded with {theirs.get('model')} (dim {ref_emb.shape[1]}), "
            f"this work directory with {mine.get('model')} (dim {x.shape[1]}); "
            "embed both with the same model"
        )
    return ref, ref_meta, ref_emb


class _Stacked:
    """Two embedding arrays indexed as one (this set's unique rows, then the reference's), read row
    by row: neither is copied into memory whole."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.a.shape[1]), dtype=np.float32)
        mine = rows < len(self.a)
        out[mine] = self.a[rows[mine]]
        out[~mine] = self.b[rows[~mine] - len(self.a)]
        return out


def _reference_oracle(config, meta, unique, x, ref_meta, ref_emb, mirror, t_emb, t_cand):
    """The pair decision of ``--against``: the self-deduplication's oracle (signals, verifier, confirm,
    derived policy) over this set's unique images followed by the reference's."""
    shas = meta["sha256"].to_numpy()[unique].tolist() + ref_meta["sha256"].to_list()
    ids: dict[str, int] = {}
    sha = np.array([ids.setdefault(h, len(ids)) for h in shas], dtype=np.int64)
    phash = np.concatenate([meta["phash"].to_numpy()[unique], ref_meta["phash"].to_numpy()]).astype(np.uint64)
    phash_m = np.concatenate(
        [meta["phash_mirror"].to_numpy()[unique], ref_meta["phash_mirror"].to_numpy()]
    ).astype(np.uint64)
    embeddings = _Stacked(x, ref_emb)
    return pair_oracle(config, embeddings, sha, phash, phash_m, mirror, t_emb, t_cand)  # type: ignore[arg-type]
