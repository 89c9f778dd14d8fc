"""The ledger's columns, reason by reason: who a removal is a duplicate of, by which signal and how
similar; why a failure failed; nothing filled in where it does not apply."""

from __future__ import annotations

import polars as pl
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed
from dedup.write.ledger import LEDGER_SCHEMA, build_ledger
from dedup.write.stage import run_write


def test_every_column_of_every_reason(tmp_path):
    big = photo(1, (400, 300))
    ref = WorkDir(tmp_path / "ref")
    write_download_shard(ref, 0, [("r0", encode(photo(2, (400, 300)), quality=90), "ref", "jpg")])
    run_embed(EmbedConfig(embedder="descriptor"), ref, progress=False)
    work = WorkDir(tmp_path / "w")
    write_download_shard(
        work,
        0,
        [
            ("k0", encode(big.resize((200, 150)), quality=80), "small copy", "jpg"),
            ("k1", encode(big, quality=92), "original", "jpg"),
            (
                "k2",
                encode(photo(2, (400, 300)).resize((300, 225)), quality=85),
                "in the reference set",
                "jpg",
            ),
            ("k3", encode(photo(3, (300, 200)), quality=90), "alone", "jpg"),
            ("k4", b"\xff\xd8\xff not a jpeg", "broken", "jpg"),
            ("k5", None, "never downloaded", "jpg"),
        ],
    )
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(against=str(ref.root)), work, progress=False)
    run_write(WriteConfig(), work, progress=False)
    ledger = pl.read_parquet(work.ledger)
    assert dict(ledger.schema) == LEDGER_SCHEMA and ledger.height == 6
    rows = {r["key"]: r for r in ledger.iter_rows(named=True)}
    assert {k: r["reason"] for k, r in rows.items()} == {
        "k0": "duplicate",
        "k1": "kept",
        "k2": "reference_duplicate",
        "k3": "kept",
        "k4": "decode_failed",
        "k5": "download_failed",
    }
    assert [k for k, r in rows.items() if r["kept"]] == ["k1", "k3"]
    dup = rows["k0"]
    assert (
        dup["duplicate_of"] == "k1" and dup["signal"] and 0 < dup["similarity"] <= 1 and dup["detail"] is None
    )
    assert dup["cluster_id"] == rows["k1"]["cluster_id"] and dup["cluster_size"] == 2
    refdup = rows["k2"]
    assert refdup["duplicate_of"] == "r0" and refdup["signal"] == "reference" and refdup["similarity"] > 0
    for key in ("k1", "k3"):
        r = rows[key]
        assert (
            r["duplicate_of"] is None
            and r["signal"] is None
            and r["similarity"] is None
            and r["detail"] is None
        )
    assert rows["k4"]["detail"].startswith("decode_error") and rows["k4"]["duplicate_of"] is None
    assert rows["k5"]["detail"].startswith("other: ") or rows["k5"]["detail"].startswith("missing_url")
    assert rows["k5"]["signal"] is None and rows["k5"]["similarity"] is None
    assert rows["k0"]["caption"] == "small copy" and rows["k0"]["url"].endswith("k0.jpg")
    assert {r["input_shard"] for r in rows.values()} == {0}


def test_a_work_dir_of_one_image(tmp_path):
    work = WorkDir(tmp_path / "w")
    write_download_shard(work, 0, [("only", encode(photo(5)), "one", "jpg")])
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    ledger = build_ledger(work)
    assert ledger.height == 1 and ledger["reason"].to_list() == ["kept"]
