"""Nothing lost from any source (#25): keys unique across every source an import reads, a changed
source refused (never "up to date"), every file an import meets either read (with a ledger row per
sample) or refused, write checking verify's invariants before it reports success, damage and
staleness named, partial precomputed vectors refused or completed, oversized images guarded."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import encode, photo, write_tar

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import
from dedup.embed.stage import run_embed
from dedup.write.stage import run_write
from dedup.write.verify import verify


def _shard(path: Path, seeds: list[int], repeat: int | None = None) -> None:
    """A tar numbered from 000000, as shards made separately are; ``repeat``: that seed's sample is
    written a second time under the first sample's key."""
    members = []
    for i, seed in enumerate(seeds):
        members += [(f"{i:06d}.jpg", encode(photo(seed, (120, 90)))), (f"{i:06d}.txt", f"c{seed}".encode())]
    if repeat is not None:
        members += [("000000.jpg", encode(photo(repeat, (120, 90)))), ("000000.txt", b"again")]
    write_tar(path, members)


def _chain(work: WorkDir) -> pl.DataFrame:
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(), work, progress=False)
    assert verify(work) == []
    return pl.read_parquet(work.ledger)


def _output_keys(work: WorkDir) -> list[str]:
    keys = []
    for path in sorted(work.dedup_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def test_keys_repeated_across_tars_are_refused_naming_both_and_rekey_imports_them(tmp_path, cli):
    src = tmp_path / "shards"
    src.mkdir()
    _shard(src / "a.tar", [1, 2, 3, 4])
    _shard(src / "b.tar", [1, 6, 7, 8])  # b/000000 is an exact copy of a/000000
    work = tmp_path / "w"
    r = cli("import", str(src), str(work))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "a.tar" in r.stderr and "b.tar" in r.stderr and "000000" in r.stderr, r.stderr
    # the refusal left nothing that blocks the work dir for another source
    other = tmp_path / "folder"
    other.mkdir()
    (other / "x.jpg").write_bytes(encode(photo(9, (120, 90))))
    assert cli("import", str(other), str(tmp_path / "w")).returncode == 0
    ledger = None
    r = cli("import", str(src), str(tmp_path / "w2"), "--rekey")
    assert r.returncode == 0, r.stderr
    ledger = _chain(WorkDir(tmp_path / "w2"))
    assert ledger.height == 8 and ledger["key"].n_unique() == 8
    assert set(ledger["key"]) == {f"{t}/{i:06d}" for t in "ab" for i in range(4)}
    exact = ledger.filter(pl.col("key").is_in(["a/000000", "b/000000"]))
    assert sorted(exact["reason"]) == ["duplicate", "kept"]  # the exact copy is removed once
    assert len(_output_keys(WorkDir(tmp_path / "w2"))) == int(ledger["kept"].sum())


def test_a_key_repeated_inside_one_tar_gets_its_own_row_and_one_outcome(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    _shard(src / "00000.tar", [1, 2, 3], repeat=5)
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    ledger = _chain(work)
    assert ledger.height == 4 and ledger["key"].n_unique() == 4
    repeat = ledger.filter(pl.col("key") == "000000~2").row(0, named=True)
    assert repeat["reason"] == "download_failed" and "repeated key" in repeat["detail"]
    assert ledger.filter(pl.col("key") == "000000")["reason"].to_list() == ["kept"]
    assert _output_keys(work) == ["000000", "000001", "000002"]


def test_parquet_files_of_the_same_name_in_two_splits_keep_apart(tmp_path):
    root = tmp_path / "repo"
    for split, seeds in (("train", [1, 2]), ("test", [3, 4])):
        (root / "data" / split).mkdir(parents=True)
        pl.DataFrame(
            {
                "image": [{"bytes": encode(photo(s, (120, 90))), "path": f"{s}.jpg"} for s in seeds],
                "text": [f"c{s}" for s in seeds],
            }
        ).write_parquet(root / "data" / split / "data-00000.parquet")
    work = WorkDir(tmp_path / "w")
    summary = run_import(root, work)  # the Hugging Face repository root: data/<split>/*.parquet
    assert summary["kind"] == "parquet" and summary["input_rows"] == 4
    ledger = _chain(work)
    assert sorted(ledger["key"]) == [
        f"data/{split}/data-00000/{row:09d}" for split in ("test", "train") for row in (0, 1)
    ]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(encode(photo(i, (120, 90))))
    return root


def test_a_changed_folder_is_refused_by_import_and_by_run_never_up_to_date(folder, tmp_path, cli):
    work = tmp_path / "w"
    assert cli("import", str(folder), str(work)).returncode == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"source: {folder}\nworkdir: {work}\nembed: {{embedder: descriptor}}\nstages: [download]\n"
    )
    r = cli("run", str(cfg))
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    (folder / "4.jpg").write_bytes(encode(photo(4, (120, 90))))  # added
    (folder / "0.jpg").unlink()  # deleted
    (folder / "1.jpg").write_bytes(encode(photo(11, (120, 90))))  # replaced
    os.utime(folder / "1.jpg", (1, 1))
    for args in (("import", str(folder), str(work)), ("run", str(cfg))):
        r = cli(*args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "changed since it was imported" in r.stderr and "Traceback" not in r.stderr
        assert "1 added (4.jpg)" in r.stderr and "1 deleted (0.jpg)" in r.stderr
        assert "1 replaced (1.jpg)" in r.stderr


def test_a_new_tar_in_a_shards_folder_is_refused(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    _shard(src / "00000.tar", [1, 2])
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    write_tar(src / "00001.tar", [("x1.jpg", encode(photo(7, (120, 90))))])
    with pytest.raises(UserError, match=r"changed since it was imported.*1 added \(00001.tar\)"):
        run_import(src, work)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("00001.tar.gz", "compressed tar"),
        ("more/00002.tar", "not one of them"),
        ("more/x.jpg", "could be more than one kind of source"),
        ("x.jpg", "could be more than one kind of source"),
    ],
)
def test_what_a_shards_folder_holds_beside_its_tars_is_refused_not_skipped(tmp_path, cli, name, message):
    src = tmp_path / "s"
    src.mkdir()
    _shard(src / "00000.tar", [1, 2])
    (src / name).parent.mkdir(exist_ok=True)
    (src / name).write_bytes(b"anything")
    r = cli("import", str(src), str(tmp_path / "w"))
    assert r.returncode == 2 and message in r.stderr and name.split("/")[-1] in r.stderr, r.stderr
    assert not (tmp_path / "w" / "download_summary.json").exists()


def test_every_visible_file_of_a_folder_has_a_row_and_oversized_images_are_guarded(folder, tmp_path):
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / "0.txt").write_text("caption of 0")  # a sidecar: read with its image, no row
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: counted, not imported
    # a 12,000 x 12,000 PNG is a few hundred KB on disk and 430 MB decoded
    big = io.BytesIO()
    from PIL import Image

    Image.new("L", (12_000, 12_000)).save(big, "PNG")
    (folder / "huge.png").write_bytes(big.getvalue())
    work = WorkDir(tmp_path / "w")
    summary = run_import(folder, work)
    assert summary["hidden_not_imported"] == 1 and summary["input_rows"] == 6
    ledger = _chain(work).sort("key")
    detail = dict(zip(ledger["key"], ledger["detail"], strict=True))
    assert "not an image file (pdf)" in detail["notes_pdf"]
    assert "image area too large (12000 x 12000" in detail["huge"]
    assert ledger.filter(pl.col("key") == "0")["caption"].to_list() == ["caption of 0"]


def test_caption_sidecars_belong_to_their_image_and_an_orphan_one_gets_a_row(tmp_path):
    """A dotted name keeps its caption (x.y.jpg with x.y.txt), a .json sidecar gives its caption, and
    a .txt with no image of its stem is a file like any other: a row saying it is not an image."""
    src = tmp_path / "f"
    src.mkdir()
    (src / "x.y.jpg").write_bytes(encode(photo(1, (64, 48))))
    (src / "x.y.txt").write_text("dotted")
    (src / "b.jpg").write_bytes(encode(photo(2, (64, 48))))
    (src / "b.json").write_text(json.dumps({"caption": "from json"}))
    (src / "notes.txt").write_text("not a caption of anything")
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    rows = pl.read_parquet(work.download_parquet(0)).sort("key")
    assert rows["key"].to_list() == ["b", "notes_txt", "x_y"]
    assert rows["caption"].to_list() == ["from json", None, "dotted"]
    assert rows["error_message"].to_list()[1] == "not an image file (txt)"


def test_embed_guards_an_oversized_image_in_a_shard_before_decoding(tmp_path):
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(big, "PNG")
    src = tmp_path / "s"
    src.mkdir()
    write_tar(src / "00000.tar", [("a.jpg", encode(photo(1, (120, 90)))), ("b.png", big.getvalue())])
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    ledger = _chain(work)
    row = ledger.filter(pl.col("key") == "b").row(0, named=True)
    assert row["reason"] == "decode_failed" and row["detail"].startswith("image_too_large: 12000 x 12000")


def _precomputed(work: WorkDir, root: Path, keys: list[str], dim: int) -> None:
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(
        root / "img_emb" / "img_emb_0.npy", np.random.default_rng(0).random((len(keys), dim)).astype("f4")
    )
    pl.DataFrame({"key": keys}).write_parquet(root / "metadata" / "metadata_0.parquet")


def test_partial_precomputed_vectors_are_refused_or_completed_never_removed(folder, tmp_path, cli):
    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    dim = 16 * 16 * 3  # the descriptor embedder's width at its default size
    pre = tmp_path / "pre"
    _precomputed(work, pre, ["0"], dim)
    r = cli("embed", str(work.root), "--embedder", "descriptor", "--from-precomputed", str(pre))
    assert r.returncode == 2 and "no vector for 3 of 4 images" in r.stderr, r.stderr
    assert not work.embed_summary.exists()
    r = cli(
        "embed", str(work.root), "--embedder", "descriptor", "--from-precomputed", str(pre), "--embed-missing"
    )
    assert r.returncode == 0, r.stderr
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(), work, progress=False)
    ledger = pl.read_parquet(work.ledger)
    assert "decode_failed" not in set(ledger["reason"]) and ledger.height == 4


def test_garbage_npy_and_damaged_json_are_one_line_errors(folder, tmp_path, cli):
    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    pre = tmp_path / "pre"
    _precomputed(work, pre, ["0", "1", "2", "3"], 8)
    (pre / "img_emb" / "img_emb_0.npy").write_bytes(b"\x93NUMPY garbage")
    r = cli("embed", str(work.root), "--embedder", "descriptor", "--from-precomputed", str(pre))
    assert r.returncode == 2 and "img_emb_0.npy: not a .npy array" in r.stderr, r.stderr
    work.download_stats(0).write_text("{not json")
    r = cli("status", str(work.root))
    r2 = cli("embed", str(work.root), "--embedder", "descriptor")
    for out in (r, r2):
        assert "Traceback" not in out.stderr, out.stderr
    assert r2.returncode == 2 and "00000_stats.json: damaged" in r2.stderr


def test_stale_clusters_and_a_damaged_ledger_are_named_by_verify_and_report(folder, tmp_path, cli):
    (folder / "0b.jpg").write_bytes(encode(photo(0, (120, 90)).resize((100, 75))))  # a copy of 0
    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    _chain(work)
    # a flipped value in the ledger (cluster_id of two rows swapped), the file rewritten
    ledger = pl.read_parquet(work.ledger)
    ids = ledger["cluster_id"].to_list()
    j = next(j for j in range(1, len(ids)) if ids[j] != ids[0])
    ids[0], ids[j] = ids[j], ids[0]
    ledger.with_columns(pl.Series("cluster_id", ids)).write_parquet(work.ledger)
    r = cli("verify", str(work.root))
    assert r.returncode == 1 and "ledger.parquet: changed since the write" in r.stderr, r.stderr
    run_write(WriteConfig(), work, progress=False)
    assert verify(work) == []
    # the cluster stage redone with other settings and no new write
    run_cluster(ClusterConfig(signals=["exact"]), work, progress=False)
    r = cli("verify", str(work.root))
    assert r.returncode == 1 and "STALE" in r.stderr, r.stderr
    assert cli("report", str(work.root)).returncode == 0
    assert "STALE" in (work.report_dir / "index.html").read_text()
    summary = json.loads((work.report_dir / "summary.json").read_text())
    assert summary["write"]["stale"]


def test_write_reports_no_success_when_its_output_breaks_an_invariant(folder, tmp_path, monkeypatch):
    from dedup.core.errors import IntegrityError
    from dedup.write import stage

    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    real = stage.copy_spans

    def drop_one(spans, work_, out):  # a copy that loses a kept sample
        real(spans[1:], work_, out)

    monkeypatch.setattr(stage, "copy_spans", drop_one)
    with pytest.raises(IntegrityError, match=r"kept sample .* is missing from the output"):
        run_write(WriteConfig(), work, progress=False)
    assert not work.write_summary.exists()


def test_a_ray_address_with_nothing_there_fails_in_seconds_in_one_line(folder, tmp_path, cli):
    import time

    pytest.importorskip("ray")
    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    started = time.time()
    r = cli("embed", str(work.root), "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert r.returncode == 2 and "no Ray head answers there" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and time.time() - started < 60


def test_long_and_non_utf8_file_names_are_imported_or_named_never_a_traceback(folder, tmp_path, cli):
    long_dir = folder / ("d" * 120)
    long_dir.mkdir()
    (long_dir / ("b" * 150 + ".jpg")).write_bytes(encode(photo(7, (120, 90))))  # over ustar's 256 bytes
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:  # a Latin-1 name on a UTF-8 system
        f.write(encode(photo(8, (120, 90))))
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    work = tmp_path / "w"
    r = cli("import", str(folder), str(work))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    ledger = _chain(WorkDir(work))
    detail = dict(zip(ledger["key"], ledger["detail"], strict=True))
    assert detail["caf\ufffd"].endswith("file name is not UTF-8; rename it to import it")
    assert "0x" not in detail["broken"]  # no memory address: a rerun writes the same bytes
    assert ledger.filter(pl.col("key") == f"{'d' * 120}/{'b' * 150}")["kept"].to_list() == [True]


def test_a_killed_imports_temporary_files_are_gone_after_the_rerun(folder, tmp_path):
    work = WorkDir(tmp_path / "w")
    run_import(folder, work)
    stray = work.download_dir / ".00000.tar.1234.tmp"
    stray.write_bytes(b"half")
    run_import(folder, work)
    assert not stray.exists()


def test_status_names_a_changed_original_tar_and_a_missing_output_tar(tmp_path, cli):
    src = tmp_path / "s"
    src.mkdir()
    _shard(src / "00000.tar", [1, 2, 3])
    work = WorkDir(tmp_path / "w")
    run_import(src, work)
    _chain(work)
    work.dedup_tar(0).unlink()
    with open(src / "00000.tar", "ab") as f:
        f.write(bytes(512))
    r = cli("status", str(work.root))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "CHANGED: 1 input tar(s)" in r.stdout and "00000.tar: changed since it was imported" in r.stdout
    assert "MISSING: 1 output tar(s) (00000)" in r.stdout


def test_an_empty_config_is_refused_and_leaves_no_work_dir(tmp_path, cli):
    (tmp_path / "empty.yaml").write_text("")
    r = cli("run", str(tmp_path / "empty.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "names no data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "work").exists()


def test_a_config_run_from_elsewhere_finds_its_relative_source_and_workdir(folder, tmp_path, cli):
    project = folder.parent
    (project / "c.yaml").write_text(f"source: {folder.name}\nworkdir: w\nstages: [download]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("run", str(project / "c.yaml"), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert (project / "w" / "download_summary.json").exists() and not any(elsewhere.iterdir())


def test_environment_failures_are_one_line_including_numpys_short_write():
    import errno

    from dedup.options import describe_os_error

    full = describe_os_error(OSError("4096 requested and 512 written"))  # NumPy: no errno on a full disk
    assert "free space and rerun" in full
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/w/x.npy")).startswith(
        "No space left on device (/w/x.npy)"
    )
    read_only = describe_os_error(OSError(errno.EROFS, "Read-only file system", "/w"))
    assert read_only == "Read-only file system (/w)"
