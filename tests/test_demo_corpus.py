"""The demo corpus's two kinds: tiles, and whole photographs where deduplication removes a minority."""

from __future__ import annotations

import numpy as np
import polars as pl

from dedup.core.config import DemoConfig
from dedup.core.layout import WorkDir
from dedup.core.markers import config_hash
from dedup.demo import build_corpus, copy_counts, photo_copy_counts
from dedup.demo_bases import make_bases, source_photos


def test_photos_kind_is_each_bundled_photograph_once_as_a_centred_square():
    bases = make_bases(DemoConfig(kind="photos", tile=64))
    photos = source_photos()
    assert [b.source for b in bases] == [f"{p}/{path.name}" for p, path in photos]
    assert {b.image.size for b in bases} == {(64, 64)}
    assert len({b.caption for b in bases}) == len(bases)
    # distinct images: no two thumbnails alike
    small = np.stack([np.asarray(b.image.resize((16, 16))).astype(float) / 255 for b in bases])
    d = np.sqrt(((small[:, None] - small[None]) ** 2).mean(axis=(2, 3, 4)))
    assert d[~np.eye(len(bases), dtype=bool)].min() > 0.02
    assert len(make_bases(DemoConfig(kind="photos", tile=64, distinct=10))) == 10


def test_photo_copy_counts_populate_every_bucket_and_leave_a_minority_to_remove():
    for seed in range(5):
        c = photo_copy_counts(85, np.random.default_rng(seed))
        removed = (c.sum() - len(c)) / c.sum()
        assert 0.3 < removed < 0.5, removed
        assert ((c >= 2) & (c <= 4)).sum() == 8 or ((c >= 2) & (c <= 4)).sum() == 9
        assert ((c >= 5) & (c <= 19)).sum() == 3 and (c >= 20).sum() == 1
    # the tiles' LAION-like skew, on as few images, would copy almost none
    assert (copy_counts(85, np.random.default_rng(0)) > 1).sum() < 8


def test_tiles_corpus_keeps_its_digest_from_before_kind_existed(tmp_path):
    work = WorkDir(tmp_path / "w")
    meta = build_corpus(DemoConfig(distinct=12, tile=32), work, failures=False)
    assert meta["config_hash"] == config_hash({"seed": 0, "distinct": 12, "tile": 32})
    assert meta["kind"] == "tiles"
    photos = build_corpus(DemoConfig(kind="photos", distinct=12, tile=32), WorkDir(tmp_path / "p"), False)
    assert photos["config_hash"] != meta["config_hash"] and photos["distinct"] == 12
    truth = pl.read_parquet(WorkDir(tmp_path / "p").demo_ground_truth)
    assert truth.height == int(photo_copy_counts(12, np.random.default_rng(0)).sum())
