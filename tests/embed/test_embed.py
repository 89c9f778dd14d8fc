"""Embed stage: hashes, descriptors and open_clip embeddings per shard; resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
from conftest import encode, photo, write_download_shard
from PIL import Image, ImageOps

from dedup.core.config import EmbedConfig
from dedup.core.layout import WorkDir
from dedup.embed.hashing import hamming, phash_pair
from dedup.embed.outputs import load_embeddings
from dedup.embed.stage import run_embed

CLIP_MODEL = "ViT-S-32-alt"  # the smallest ViT in open_clip's registry


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """Random-init open_clip weights saved to a file: loaded through the local-checkpoint route."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "random_init.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _copies_shard(work: WorkDir) -> dict[str, str]:
    """Originals, a byte-identical copy, a re-encoded and a resized copy, and unrelated images."""
    base = photo(1, (160, 120))
    original = encode(base, quality=92)
    other = [encode(photo(s, (160, 120)), quality=92) for s in range(10, 16)]
    items = [
        ("00000000", original, "original", "jpg"),
        ("00000001", original, "same bytes elsewhere", "jpg"),
        ("00000002", encode(base, quality=35), "re-encoded", "jpg"),
        ("00000003", encode(base.resize((96, 72), Image.BICUBIC), "PNG"), "resized", "png"),
        ("00000004", encode(ImageOps.mirror(base), quality=92), "mirrored", "jpg"),
        ("00000005", b"\xff\xd8\xff\xe0 definitely not a jpeg", "broken", "jpg"),
    ]
    items += [(f"0000001{i}", data, f"unrelated {i}", "jpg") for i, data in enumerate(other)]
    write_download_shard(work, 0, items)
    return {k: c for k, _, c, _ in items}


def test_descriptor_stage_hashes_and_statuses(tmp_path):
    work = WorkDir(tmp_path / "w")
    _copies_shard(work)
    summary = run_embed(EmbedConfig(embedder="descriptor", workers=2, batch_size=4), work, progress=False)
    meta, emb = load_embeddings(work)
    by = {c: i for i, c in enumerate(meta["caption"].to_list())}
    assert summary["rows"] == meta.height == emb.shape[0] == 12
    assert emb.dtype == np.float32 and np.load(work.img_emb(0)).dtype == np.float16
    # identical bytes: identical hash and embedding
    assert meta["sha256"][by["original"]] == meta["sha256"][by["same bytes elsewhere"]]
    assert np.array_equal(emb[by["original"]], emb[by["same bytes elsewhere"]])
    # the broken image keeps its row, says why, and gets no vector
    broken = by["broken"]
    assert meta["status"][broken].startswith("decode_error")
    assert not emb[broken].any()
    assert meta["sha256"][broken] is not None
    assert summary["statuses"]["ok"] == 11
    # perceptual hashes: copies close, unrelated far
    ph = meta["phash"].fill_null(0).to_numpy().astype(np.uint64)
    orig = ph[by["original"]]
    for name in ("re-encoded", "resized"):
        assert hamming(orig, ph[by[name]]) <= 6, name
    unrelated = [by[f"unrelated {i}"] for i in range(6)]
    assert min(hamming(orig, ph[u]) for u in unrelated) > 16
    # the mirrored copy matches through the mirror hash
    mirror = meta["phash_mirror"].fill_null(0).to_numpy().astype(np.uint64)
    assert hamming(mirror[by["mirrored"]], orig) <= 6 < hamming(ph[by["mirrored"]], orig)


def test_killed_after_last_shard_before_summary_rerun_still_says_what_made_the_vectors(tmp_path):
    """A kill between the last shard's marker and the summary leaves nothing to embed on rerun: the
    summary must still name the model and width (cluster reads them), from the shards' markers."""
    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig

    work = WorkDir(tmp_path / "w")
    _copies_shard(work)
    config = EmbedConfig(embedder="descriptor", workers=1, batch_size=4)
    first = run_embed(config, work, progress=False)
    work.embed_summary.unlink()  # the state a kill -9 in that window leaves
    again = run_embed(config, work, progress=False)
    assert again["skipped_shards"] == 1 and again["run_images"] == 0
    assert (again["model"], again["dim"]) == (first["model"], first["dim"]) and first["dim"] > 0
    assert run_cluster(ClusterConfig(), work, progress=False)["clustered"] == 11


def test_phash_matches_imagehash_bit_for_bit():
    imagehash = pytest.importorskip("imagehash")
    for seed in range(5):
        im = photo(seed, (120, 90))
        straight, mirrored = phash_pair(im)
        assert f"{straight:016x}" == str(imagehash.phash(im))
        assert f"{mirrored:016x}" == str(imagehash.phash(ImageOps.mirror(im)))


def test_clip_from_local_checkpoint_puts_copies_closest(tmp_path, clip_checkpoint):
    work = WorkDir(tmp_path / "w")
    _copies_shard(work)
    cfg = EmbedConfig(embedder="clip", model=CLIP_MODEL, pretrained=clip_checkpoint, batch_size=4, workers=1)
    summary = run_embed(cfg, work, progress=False)
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["model"] == f"{CLIP_MODEL}/random_init.pt"
    meta, emb = load_embeddings(work)
    by = {c: i for i, c in enumerate(meta["caption"].to_list())}
    assert np.allclose(np.linalg.norm(emb[by["original"]]), 1.0, atol=1e-2)
    o = emb[by["original"]]
    unrelated = max(float(o @ emb[by[f"unrelated {i}"]]) for i in range(6))
    for name in ("same bytes elsewhere", "re-encoded", "resized"):
        assert float(o @ emb[by[name]]) > unrelated, name


def test_missing_weights_error_says_how_to_go_offline(tmp_path, cli):
    work = WorkDir(tmp_path / "w")
    _copies_shard(work)
    env_offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dedup",
            "embed",
            str(work.root),
            "--model",
            CLIP_MODEL,
            "--pretrained",
            "no_such_tag",
        ],
        capture_output=True,
        text=True,
        env=env_offline,
        timeout=300,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load open_clip weights 'no_such_tag'")
    assert "--pretrained /path/to" in last and "Traceback" not in result.stderr
    assert not work.img_emb(0).exists()


def _shards(work: WorkDir, n_shards: int, per_shard: int) -> None:
    for s in range(n_shards):
        items = [
            (f"{s:05d}{i:04d}", encode(photo(100 * s + i, (128, 96))), f"img {s}-{i}", "jpg")
            for i in range(per_shard)
        ]
        write_download_shard(work, s, items)


def _outputs(work: WorkDir, n: int) -> list[tuple[bytes, pl.DataFrame]]:
    return [(work.img_emb(s).read_bytes(), pl.read_parquet(work.metadata(s))) for s in range(n)]


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, clip_checkpoint):
    n_shards = 4
    killed, clean = WorkDir(tmp_path / "killed"), WorkDir(tmp_path / "clean")
    for w in (killed, clean):
        _shards(w, n_shards, 24)
    args = [
        "embed",
        "--model",
        CLIP_MODEL,
        "--pretrained",
        clip_checkpoint,
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dedup", args[0], str(killed.root), *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not killed.marker("embed", 0).exists():
        assert proc.poll() is None, "embed exited before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [s for s in range(n_shards) if killed.marker("embed", s).exists()]
    assert 1 <= len(done) < n_shards, "the kill must land between shards"
    for s in range(n_shards):  # nothing partial under a final name: a final file is a complete file
        if killed.img_emb(s).exists():
            np.load(killed.img_emb(s))
        if killed.metadata(s).exists():
            pl.read_parquet(killed.metadata(s))
    cfg = EmbedConfig(embedder="clip", model=CLIP_MODEL, pretrained=clip_checkpoint, batch_size=8, workers=1)
    resumed = run_embed(cfg, killed, progress=False)
    assert resumed["skipped_shards"] == len(done)
    run_embed(cfg, clean, progress=False)
    for (ea, ma), (eb, mb) in zip(_outputs(killed, n_shards), _outputs(clean, n_shards), strict=True):
        assert ea == eb
        assert ma.equals(mb)
    assert not list(killed.embed_dir.rglob("*.tmp"))


def test_precomputed_import_round_trips(tmp_path):
    work = WorkDir(tmp_path / "w")
    _shards(work, 2, 10)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    meta, emb = load_embeddings(work)
    released = tmp_path / "released"
    (released / "img_emb").mkdir(parents=True)
    (released / "metadata").mkdir()
    # released files are split and ordered differently from our shards, and joined by URL
    order = np.random.default_rng(0).permutation(meta.height)
    for part, idx in enumerate(np.array_split(order, 3)):
        np.save(released / "img_emb" / f"img_emb_{part}.npy", emb[idx].astype(np.float16))
        meta[idx.tolist()].select("url", "caption").write_parquet(
            released / "metadata" / f"metadata_{part}.parquet"
        )
    other = WorkDir(tmp_path / "imported")
    _shards(other, 2, 10)
    summary = run_embed(EmbedConfig(from_precomputed=str(released)), other, progress=False)
    assert summary["embedder"] == "precomputed" and summary["statuses"] == {"ok": 20}
    meta2, emb2 = load_embeddings(other)
    assert meta2["key"].to_list() == meta["key"].to_list()
    assert np.allclose(emb2, emb, atol=2e-3)


def test_embeddings_memmap_returns_rows_in_the_order_asked(small_demo, tmp_path):
    from dedup.embed.outputs import embeddings_memmap

    whole = np.concatenate([np.load(small_demo.img_emb(s)) for s in small_demo.download_shards()])
    rows = np.array([len(whole) - 1, 0, 7, 3])
    got = embeddings_memmap(small_demo, rows, tmp_path / "x.npy")
    assert np.array_equal(np.asarray(got), whole[rows])
