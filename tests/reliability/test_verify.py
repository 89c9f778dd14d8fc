"""`dedup verify` on a small finished work dir (in process, seconds): each kind of damage to the ledger,
the output shards or the summary is reported by name; the untouched work dir verifies clean."""

from __future__ import annotations

import json
import shutil
import tarfile

import polars as pl
import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed
from dedup.write.stage import run_write
from dedup.write.tar_index import index_tar
from dedup.write.verify import verify


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = WorkDir(tmp_path_factory.mktemp("verify") / "w")
    items = [
        (f"{i:09d}", encode(photo(i % 5, (160, 120)), quality=80 + i % 3 * 5), f"c{i}", "jpg")
        for i in range(9)
    ]
    items.append(("000000009", None, "gone", "jpg"))  # a failed download
    write_download_shard(work, 0, items)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(samples_per_shard=3), work, progress=False)
    assert verify(work) == []
    return work


def _tar_bytes(work: WorkDir) -> tuple[bytearray, list]:
    tar = work.dedup_tar(0)
    return bytearray(tar.read_bytes()), index_tar(tar, 0)


def _ledger_edit(work: WorkDir, fn) -> None:
    fn(pl.read_parquet(work.ledger)).write_parquet(work.ledger)


def _summary_edit(work: WorkDir, key: str, value) -> None:
    s = json.loads(work.write_summary.read_text())
    s[key] = value
    work.write_summary.write_text(json.dumps(s))


DAMAGE = {
    "input row without a ledger row": (
        lambda w: _ledger_edit(w, lambda d: d.filter(pl.col("key") != "000000009")),
        "input sample 000000009 is missing from the ledger",
    ),
    "ledger row twice": (
        lambda w: _ledger_edit(w, lambda d: pl.concat([d, d.head(1)])),
        "ledger lists 000000000 2 times",
    ),
    "ledger row that is no input": (
        lambda w: _ledger_edit(
            w, lambda d: pl.concat([d, d.head(1).with_columns(pl.lit("999").alias("key"))])
        ),
        "ledger lists 999, which is not an input sample",
    ),
    "kept sample missing from the output": (
        lambda w: (
            lambda data, spans: w.dedup_tar(0).write_bytes(
                bytes(data[: spans[0].start] + data[spans[0].end :])
            )
        )(*_tar_bytes(w)),
        "is missing from the output shards",
    ),
    "an output sample twice": (
        lambda w: (
            lambda data, spans: w.dedup_tar(0).write_bytes(
                bytes(data[: spans[1].end] + data[spans[1].start : spans[1].end] + data[spans[1].end :])
            )
        )(*_tar_bytes(w)),
        "2 times",
    ),
    "an output sample the ledger removes": (
        lambda w: _ledger_edit(
            w,
            lambda d: d.with_columns(
                pl.when(pl.col("kept")).then(pl.lit(False)).otherwise(pl.col("kept")).alias("kept")
            ),
        ),
        "which the ledger does not keep",
    ),
    "a changed byte": (None, "differs from the input"),
    "an unreadable output tar": (
        lambda w: w.dedup_tar(0).write_bytes(b"garbage" * 100),
        "not a readable tar",
    ),
    "summary input count": (
        lambda w: _summary_edit(w, "input_samples", 3),
        "write_summary says 3 input samples",
    ),
    "summary kept count": (lambda w: _summary_edit(w, "kept", 1), "counts do not add up"),
    "summary removed count": (lambda w: _summary_edit(w, "removed", 0), "counts do not add up"),
    "an extra member in an output sample": (None, ".extra differs from the input"),
    "summary reasons": (lambda w: _summary_edit(w, "by_reason", {}), "write_summary reasons"),
    "summary missing": (lambda w: w.write_summary.unlink(), "write_summary.json: missing"),
}


def _add_a_member(work: WorkDir) -> None:
    """The first output sample gains a member the input sample does not have (same key, adjacent)."""
    import io

    tar = work.dedup_tar(0)
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    key = members[0][0].name.split(".", 1)[0]
    last = max(i for i, (m, _) in enumerate(members) if m.name.split(".", 1)[0] == key)
    extra = tarfile.TarInfo(f"{key}.extra")
    extra.size = 5
    members.insert(last + 1, (extra, b"extra"))
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            t.addfile(m, io.BytesIO(data))


def _flip_a_byte(work: WorkDir) -> None:
    tar = work.dedup_tar(0)
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as t:
        image = t.getmembers()[0]
    data[image.offset_data + image.size // 2] ^= 0x01
    tar.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_each_kind_of_damage(finished, tmp_path, damage):
    work = WorkDir(tmp_path / "w")
    shutil.copytree(finished.root, work.root)
    fn, expected = DAMAGE[damage]
    (fn or (_add_a_member if "extra" in damage else _flip_a_byte))(work)
    problems = verify(work)
    assert any(expected in p for p in problems), problems
    assert verify(finished) == []


def test_file_digest_is_the_sha256_of_the_bytes_and_none_for_a_missing_file(tmp_path):
    import hashlib

    from dedup.write.verify import file_digest

    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # over one read block
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(tmp_path / "absent") is None


def test_same_rows_in_other_bytes_are_still_a_changed_ledger_and_stale_clusters(finished, tmp_path):
    """The digests the write recorded are what notices an edit no content check sees: the same rows
    written again with other compression. A write that recorded no digests claims nothing."""
    work = WorkDir(tmp_path / "w")
    shutil.copytree(finished.root, work.root)
    pl.read_parquet(work.ledger).write_parquet(work.ledger, compression="uncompressed")
    problems = verify(work)
    assert any("changed since the write made it" in p for p in problems), problems
    assert not any("STALE" in p for p in problems), problems
    pl.read_parquet(work.clusters).write_parquet(work.clusters, compression="uncompressed")
    assert any(p.startswith("STALE:") for p in verify(work)), verify(work)
    summary = json.loads(work.write_summary.read_text())
    for key in ("ledger_sha256", "clusters_sha256"):
        summary.pop(key)
    work.write_summary.write_text(json.dumps(summary))
    assert not any("changed since" in p or "STALE" in p for p in verify(work)), verify(work)
