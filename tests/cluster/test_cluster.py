"""Cluster stage end to end: contracts of its files, reference dedup, and real photos with planted copies."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest
from conftest import encode, photo, write_download_shard
from PIL import Image, ImageOps

from dedup.cluster.evaluate import format_evaluation, run_evaluate
from dedup.cluster.oracle import local_threads
from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed


def _corpus(work: WorkDir, seeds: range, copies_of: dict[int, int], shard: int = 0) -> None:
    items = []
    for s in seeds:
        im = photo(s, (160, 120))
        items.append((f"{shard:05d}{s:04d}", encode(im, quality=90), f"photo {s}", "jpg"))
        for c in range(copies_of.get(s, 0)):
            variant = [
                lambda x: x.resize((120, 90), Image.BICUBIC),
                lambda x: ImageOps.mirror(x),
                lambda x: x.crop((6, 5, 154, 115)),
            ][c % 3](im)
            items.append(
                (f"{shard:05d}{s:04d}c{c}", encode(variant, quality=60), f"copy {c} of photo {s}", "jpg")
            )
    write_download_shard(work, shard, items)


def test_cluster_files_follow_the_contract(tmp_path):
    work = WorkDir(tmp_path / "w")
    _corpus(work, range(30), {0: 5, 1: 2, 2: 1})
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    started = time.time()
    summary = run_cluster(ClusterConfig(), work, progress=False)
    # the stage's own seconds lie within the call, and the tiers' (thread seconds) within what its
    # threads could spend (a clock mix-up once wrote epochs)
    wall = time.time() - started
    assert 0 < summary["seconds"] <= wall
    assert 0 <= sum(t["seconds"] for t in summary["tiers"].values()) <= wall * local_threads(ClusterConfig())
    clusters = pl.read_parquet(work.clusters)
    pairs = pl.read_parquet(work.pairs)
    assert {
        "key",
        "cluster_id",
        "cluster_size",
        "is_representative",
        "representative_key",
        "similarity_to_representative",
    } <= set(clusters.columns)
    assert {"key_a", "key_b", "signal", "similarity"} <= set(pairs.columns)
    assert clusters["key"].is_unique().all() and clusters.height == 38
    reps = clusters.filter(pl.col("is_representative"))
    assert reps.height == clusters["cluster_id"].n_unique()  # one kept per group
    assert (reps["key"] == reps["representative_key"]).all()
    sizes = clusters.group_by("cluster_id").agg(pl.len(), pl.col("cluster_size").first())
    assert (sizes["len"] == sizes["cluster_size"]).all()
    # every planted copy is grouped with its photo, nothing else is
    group_of = dict(zip(clusters["key"].to_list(), clusters["cluster_id"].to_list(), strict=True))
    for s, n in {0: 5, 1: 2, 2: 1}.items():
        members = {group_of[f"00000{s:04d}"]} | {group_of[f"00000{s:04d}c{c}"] for c in range(n)}
        assert len(members) == 1
    assert summary["removed"] == 8 and summary["duplicate_clusters"] == 3
    assert json.loads(work.cluster_summary.read_text())["removed"] == 8


def test_reference_dedup_marks_copies_of_the_reference_only(tmp_path):
    ref, work = WorkDir(tmp_path / "eval"), WorkDir(tmp_path / "train")
    write_download_shard(
        ref, 0, [(f"r{s}", encode(photo(s, (160, 120))), f"eval {s}", "jpg") for s in range(5)]
    )
    items = [
        (f"t{s}", encode(photo(s, (160, 120)).resize((128, 96)), quality=70), f"train {s}", "jpg")
        for s in range(3)
    ]  # copies of eval images 0-2
    items += [(f"t{s}", encode(photo(s, (160, 120))), f"train {s}", "jpg") for s in range(100, 110)]
    write_download_shard(work, 0, items)
    ref_before = sorted(p.read_bytes() for p in ref.root.rglob("*") if p.is_file())
    for w in (ref, work):
        run_embed(EmbedConfig(embedder="descriptor"), w, progress=False)
    ref_before = sorted(p.read_bytes() for p in ref.root.rglob("*") if p.is_file())
    summary = run_cluster(ClusterConfig(against=str(ref.root)), work, progress=False)
    clusters = pl.read_parquet(work.clusters)
    marked = dict(zip(clusters["key"].to_list(), clusters["reference_key"].to_list(), strict=True))
    assert {k: v for k, v in marked.items() if v is not None} == {"t0": "r0", "t1": "r1", "t2": "r2"}
    assert summary["reference_removed"] == 3
    assert sorted(p.read_bytes() for p in ref.root.rglob("*") if p.is_file()) == ref_before


def test_reference_must_use_the_same_embedder(tmp_path):
    from dedup.core.errors import UserError

    ref, work = WorkDir(tmp_path / "a"), WorkDir(tmp_path / "b")
    for w in (ref, work):
        write_download_shard(w, 0, [(f"k{s}", encode(photo(s)), "c", "jpg") for s in range(4)])
    run_embed(EmbedConfig(embedder="descriptor", descriptor_size=8), ref, progress=False)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    with pytest.raises(UserError, match="embed both with the same model"):
        run_cluster(ClusterConfig(against=str(ref.root)), work, progress=False)


@pytest.mark.slow
def test_planted_duplicates_in_real_photos_are_recovered(small_demo):
    result = run_evaluate(small_demo, small_demo.demo_ground_truth)
    print("\n" + format_evaluation(result))
    pw, rm = result["pairwise"], result["removals"]
    assert pw["recall"] >= 0.9 and pw["precision"] >= 0.9
    assert rm["recall"] >= 0.9 and rm["precision"] >= 0.85
    for transform, v in result["per_transform"].items():
        assert v["recall"] >= 0.75, transform
    sweep = pl.read_parquet(small_demo.sweep)
    assert sweep["removed"].is_sorted(descending=True)  # a stricter threshold never removes more


@pytest.mark.slow
def test_output_does_not_depend_on_the_number_of_verifying_threads(small_demo, tmp_path):
    import shutil

    outputs = []
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        shutil.copytree(small_demo.root, root)
        work = WorkDir(root)
        run_cluster(ClusterConfig(verify_workers=workers), work, progress=False, force=True)
        outputs.append((work.clusters.read_bytes(), pl.read_parquet(work.pairs)))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1].equals(outputs[1][1])


def test_reference_matches_go_through_the_same_copy_decision(tmp_path):
    """--against decides with the same oracle as self-dedup: a copy of a reference image is marked,
    another photograph of the same subject (the next frame of a sequence: pHash distance 6, within the
    hash threshold, but not a copy) is not."""
    from bench.copydetect import _package_dir

    images = _package_dir("mvtbdata") / "images"

    def real(name: str, side: int = 320) -> Image.Image:
        im = Image.open(images / name).convert("RGB")
        s = side / max(im.size)
        return im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)

    ref, work = WorkDir(tmp_path / "eval"), WorkDir(tmp_path / "train")
    write_download_shard(
        ref,
        0,
        [
            ("r_frame", encode(real("seq/im.002.png")), "frame 2", "jpg"),
            ("r_walls", encode(real("walls-l.png")), "walls", "jpg"),
        ],
    )
    copy = real("walls-l.png").resize((256, 192), Image.LANCZOS)
    items = [
        ("t_next_frame", encode(real("seq/im.003.png")), "frame 3", "jpg"),
        ("t_walls_copy", encode(copy, quality=70), "walls again", "jpg"),
    ]
    items += [(f"t{s}", encode(photo(s, (160, 120))), f"train {s}", "jpg") for s in range(100, 104)]
    write_download_shard(work, 0, items)
    for w in (ref, work):
        run_embed(EmbedConfig(embedder="descriptor"), w, progress=False)
    run_cluster(ClusterConfig(against=str(ref.root)), work, progress=False)
    clusters = pl.read_parquet(work.clusters)
    marked = {k: v for k, v in zip(clusters["key"], clusters["reference_key"], strict=True) if v is not None}
    assert marked == {"t_walls_copy": "r_walls"}
