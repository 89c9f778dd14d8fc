"""dedup import: a folder of images and parquet files with image bytes become a work directory that
embed, cluster, write and verify run on unchanged; original bytes and every sample accounted for."""

from __future__ import annotations

import io
import json
import tarfile

import polars as pl
import pytest
from conftest import encode, photo, write_download_shard, write_tar

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir
from dedup.download.ingest import run_import
from dedup.download.readers import ImportOptions
from dedup.download.sources import key_of
from dedup.embed.stage import run_embed
from dedup.write.stage import run_write
from dedup.write.verify import verify


def _pipeline(work: WorkDir) -> pl.DataFrame:
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    run_write(WriteConfig(samples_per_shard=4), work, progress=False)
    assert verify(work) == []
    return pl.read_parquet(work.ledger)


def _output_members(work: WorkDir) -> dict[str, bytes]:
    out = {}
    for tar_path in sorted(work.dedup_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "trip" / "day.1").mkdir(parents=True)
    originals = {
        "a.jpg": encode(photo(1, (160, 120)), quality=90),
        "trip/b.png": encode(photo(2, (160, 120)), "PNG"),
        "trip/day.1/c.jpg": encode(photo(3, (160, 120)), quality=90),
        # a copy of a.jpg at another size and quality: the dedup must find it
        "trip/a_copy.jpg": encode(photo(1, (160, 120)).resize((120, 90)), quality=70),
        "broken.jpg": b"\xff\xd8\xff not really a jpeg",
    }
    for rel, data in originals.items():
        (root / rel).write_bytes(data)
    (root / "a.txt").write_text("a red barn")
    (root / "trip" / "b.json").write_text(json.dumps({"caption": "a blue lake"}))
    (root / ".hidden.jpg").write_bytes(originals["a.jpg"])  # hidden files are not images of the set
    return root, originals


def test_folder_import_runs_the_whole_chain_with_original_bytes(folder, tmp_path):
    root, originals = folder
    work = WorkDir(tmp_path / "work")
    summary = run_import(root, work, samples_per_shard=3)
    assert summary["input_rows"] == 5 and summary["downloaded"] == 4 and summary["shards"] == 2
    ledger = _pipeline(work)
    assert ledger.height == 5  # every file, the unreadable one included
    by_key = {r["key"]: r for r in ledger.iter_rows(named=True)}
    assert by_key["broken"]["reason"] == "download_failed" and "not an image" in by_key["broken"]["detail"]
    assert by_key["trip/a_copy"]["reason"] == "duplicate" or by_key["a"]["reason"] == "duplicate"
    assert by_key["a"]["caption"] == "a red barn" and by_key["trip/b"]["caption"] == "a blue lake"
    assert by_key["trip/day_1/c"]["kept"]  # dots in folder names cannot reach a WebDataset key
    members = _output_members(work)
    for rel, data in originals.items():
        key, ext = key_of(rel), rel.rsplit(".", 1)[1]
        if by_key[key]["kept"]:
            assert members[f"{key}.{ext}"] == data  # byte for byte, never re-encoded


def test_parquet_with_image_bytes_is_streamed_in(tmp_path):
    images = [encode(photo(i, (128, 96)), quality=90) for i in range(5)]
    rows = [
        {"image": {"bytes": b, "path": f"img{i}.jpg"}, "text": f"caption {i}"} for i, b in enumerate(images)
    ]
    rows.append({"image": {"bytes": None, "path": None}, "text": "no image"})
    src = tmp_path / "hf"
    src.mkdir()
    pl.DataFrame(rows).write_parquet(src / "train-00000.parquet")
    work = WorkDir(tmp_path / "work")
    summary = run_import(src, work)
    assert summary["kind"] == "parquet" and summary["input_rows"] == 6 and summary["downloaded"] == 5
    ledger = _pipeline(work)
    assert ledger.height == 6 and (ledger["reason"] == "download_failed").sum() == 1
    members = _output_members(work)
    kept = ledger.filter(pl.col("kept"))
    assert kept.height == 5
    for key in kept["key"].to_list():
        row = int(key.rsplit("/", 1)[1])
        assert members[f"{key}.jpg"] == images[row]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "empty").mkdir(), "no images found"),
        (lambda p: pl.DataFrame({"x": [1]}).write_parquet(p / "t.parquet"), "no image column"),
        (lambda p: (p / "notes.txt").write_text("hi"), "no images found, and no other kind of source"),
        (lambda p: (p / "junk.tar").write_bytes(b"not a tar at all" * 64), "not a readable tar"),
        (lambda p: write_tar(p / "text.tar", {"a.txt": b"only text"}), "not a WebDataset of images"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, cli, make, message):
    make(tmp_path)
    source = next(p for p in tmp_path.iterdir())
    r = cli("import", str(source), str(tmp_path / "work"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_import_refuses_a_work_directory_that_has_other_data(folder, tmp_path, cli):
    root, _ = folder
    run_import(root, WorkDir(tmp_path / "work"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.jpg").write_bytes(encode(photo(9)))
    r = cli("import", str(other), str(tmp_path / "work"))
    assert r.returncode == 2 and "already imported from" in r.stderr, r.stderr
    again = cli("import", str(root), str(tmp_path / "work"))  # the same source: resumes, nothing to do
    assert again.returncode == 0 and "up to date: imported from" in again.stdout, again.stderr
    url_list = tmp_path / "urls.csv"
    url_list.write_text("URL,TEXT\nhttp://127.0.0.1:9/a.jpg,a\n")
    r = cli("download", str(url_list), str(tmp_path / "work"))
    assert r.returncode == 2 and "holds data imported from" in r.stderr, r.stderr
    downloaded = WorkDir(tmp_path / "w2")
    write_download_shard(downloaded, 0, [("k", encode(photo(1)), "c", "http://x/k.jpg")])
    r = cli("import", str(root), str(downloaded.root))
    assert r.returncode == 2 and "already holds shards" in r.stderr, r.stderr


def test_a_config_with_source_runs_the_pipeline_on_a_folder_and_reruns_up_to_date(folder, tmp_path, cli):
    root, originals = folder
    config = tmp_path / "mine.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'work'}\n"
        f"source: {root}\n"
        "embed: {embedder: descriptor}\n"
        "stages: [download, embed, cluster, write]\n"
    )
    first = cli("run", str(config))
    assert first.returncode == 0, first.stderr
    assert "imported 4 of 5 images" in first.stdout
    ledger = pl.read_parquet(tmp_path / "work" / "ledger.parquet")
    assert ledger.height == len(originals)
    again = cli("run", str(config))
    assert again.returncode == 0 and "up to date: imported from" in again.stdout, again.stdout


def _size(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture
def shards(tmp_path):
    """Three img2dataset-style shards: 0 and 2 share a copy of one photo; shard 1's parquet records a
    failed download that never reached its tar; one member does not decode."""
    root = tmp_path / "laion"
    root.mkdir()
    originals: dict[str, bytes] = {}
    for shard in range(3):
        members = {}
        for i in range(4):
            key = f"{shard:05d}{i:04d}"
            seed = 100 if (shard, i) in ((0, 0), (2, 3)) else shard * 10 + i
            data = encode(photo(seed, (400, 300)), quality=92)
            if (shard, i) == (1, 2):
                data = b"\xff\xd8\xff truncated"
            members[f"{key}.jpg"] = data
            members[f"{key}.txt"] = f"caption {key}".encode()
            members[f"{key}.json"] = json.dumps({"url": f"http://host/{key}.jpg", "key": key}).encode()
        write_tar(root / f"{shard:05d}.tar", members)
        originals.update(members)
    pl.DataFrame(
        {
            "key": ["000100099"],
            "url": ["http://host/gone.jpg"],
            "status": ["failed_to_download"],
            "error_message": ["HTTP Error 404: Not Found"],
        }
    ).write_parquet(root / "00001.parquet")
    return root, originals


@pytest.mark.parametrize("form", ["folder", "brace", "glob", "file_url"])
def test_shards_are_read_in_place_and_run_the_whole_chain(shards, tmp_path, form):
    root, originals = shards
    source = {
        "folder": str(root),
        "brace": f"{root}/{{00000..00002}}.tar",
        "glob": f"{root}/*.tar",
        "file_url": f"file://{root}",
    }[form]
    work = WorkDir(tmp_path / "work")
    summary = run_import(source, work)
    assert summary["kind"] == "shards" and summary["in_place"] and summary["shards"] == 3
    assert summary["input_rows"] == 13 and summary["downloaded"] == 12  # the 404 row is counted, not lost
    # no image byte copied: the work dir holds references and small parquet/json files only
    assert not list(work.download_dir.glob("*.tar"))
    assert _size(work.root) < _size(root) / 4, (_size(work.root), _size(root))
    ledger = _pipeline(work)
    assert ledger.height == 13
    by_key = {r["key"]: r for r in ledger.iter_rows(named=True)}
    assert by_key["000100099"]["reason"] == "download_failed" and "404" in by_key["000100099"]["detail"]
    assert by_key["000010002"]["reason"] == "decode_failed"
    assert {by_key["000000000"]["reason"], by_key["000020003"]["reason"]} == {"kept", "duplicate"}
    assert by_key["000000001"]["url"] == "http://host/000000001.jpg"  # the shard's own url kept
    members = _output_members(work)
    kept = {k for k, r in by_key.items() if r["kept"]}
    assert {name.split(".", 1)[0] for name in members} == kept
    for name, data in members.items():
        assert originals[name] == data  # original member bytes and names
    if form == "folder":  # the report and the attack's reader work on a work dir read in place
        from attack.data import read_images
        from dedup.core.config import ReportConfig
        from dedup.report.stage import run_report

        run_report(ReportConfig(), work)
        assert (work.report_dir / "index.html").exists()
        images = read_images(work.download_dir, 16)
        assert len(images.keys) == 11 and "000010002" not in images.keys  # the undecodable one skipped


def test_a_changed_source_shard_is_refused_not_reused(shards, tmp_path, cli):
    root, _ = shards
    work = WorkDir(tmp_path / "work")
    run_import(root, work)
    with open(root / "00001.tar", "ab") as f:
        f.write(b"\0" * 1024)
    r = cli("embed", str(work.root), "--embedder", "descriptor")
    assert r.returncode == 2 and "changed since it was imported" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_shards_and_folders_on_an_fsspec_filesystem(shards, folder, tmp_path):
    """memory:// stands for an object store: shards are streamed in once, byte for byte; a folder and
    parquet are read through the same filesystem."""
    import fsspec

    mem = fsspec.filesystem("memory")
    root, _ = shards
    for p in sorted(root.glob("*.tar")):
        mem.pipe(f"/bucket/shards/{p.name}", p.read_bytes())
    work = WorkDir(tmp_path / "work")
    summary = run_import("memory://bucket/shards/{00000..00002}.tar", work)
    assert summary["kind"] == "shards" and not summary["in_place"] and summary["input_rows"] == 12
    for shard, p in enumerate(sorted(root.glob("*.tar"))):
        assert work.download_tar(shard).read_bytes() == p.read_bytes()
    ledger = _pipeline(work)
    assert ledger.height == 12

    photos, files = folder
    for p in sorted(photos.rglob("*")):
        if p.is_file():
            mem.pipe(f"/bucket/photos/{p.relative_to(photos).as_posix()}", p.read_bytes())
    work2 = WorkDir(tmp_path / "work2")
    summary = run_import("memory://bucket/photos", work2)
    assert summary["kind"] == "folder" and summary["input_rows"] == len(files)
    ledger = _pipeline(work2)
    assert ledger.filter(pl.col("key") == "a")["caption"].to_list() == ["a red barn"]

    rows = [{"image": {"bytes": files["a.jpg"], "path": "a.jpg"}, "text": "barn"}]
    buffer = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buffer)
    mem.pipe("/bucket/hf/train.parquet", buffer.getvalue())
    summary = run_import("memory://bucket/hf/train.parquet", WorkDir(tmp_path / "work3"))
    assert summary["kind"] == "parquet" and summary["downloaded"] == 1
    mem.rm("/bucket", recursive=True)


def test_the_import_is_a_stage_with_a_unit_per_source_tar_and_resumes_from_them(shards, tmp_path):
    """#27 item 2: a unit per tar, done when its shard's _stats.json exists; a killed import (here:
    one shard's stats removed) redoes that unit alone and ends with the same summary."""
    from dedup.core.stage import Stage
    from dedup.download.ingest import ImportStage

    root, _ = shards
    work = WorkDir(tmp_path / "w")
    first = run_import(root, work)
    stage = ImportStage(root, ImportOptions())
    assert isinstance(stage, Stage)
    units = stage.plan(work).units
    assert [u.index for u in units] == [0, 1, 2] and all(stage.done(work, u) for u in units)
    work.download_stats(1).unlink()
    stamps = {s: work.download_stats(s).stat().st_mtime_ns for s in (0, 2)}
    assert [stage.done(work, u) for u in stage.plan(work).units] == [True, False, True]
    again = run_import(root, work)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in first.items() if k != "seconds"
    }
    assert {s: work.download_stats(s).stat().st_mtime_ns for s in (0, 2)} == stamps  # not redone


def _files(work: WorkDir) -> dict[str, bytes]:
    """Every file the import left in download/ (shards, their parquet and stats, references)."""
    return {p.name: p.read_bytes() for p in sorted(work.download_dir.iterdir())}


def _two_parquet_files(root) -> list[bytes]:
    root.mkdir()
    images = [encode(photo(i, (64, 48)), quality=90) for i in range(7)]
    first = [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images[:5])]
    pl.DataFrame({"image": first}).write_parquet(root / "a.parquet")
    pl.DataFrame({"image": [{"bytes": b, "path": "x.jpg"} for b in images[5:]]}).write_parquet(
        root / "b.parquet"
    )
    return images


def test_parquet_and_folder_imports_are_units_per_file_and_per_slice_and_resume_from_them(folder, tmp_path):
    """#27 item 2: a parquet file is a unit (its shards counted from the footer, so numbered before
    any is written), a folder a unit per samples_per_shard files; a unit whose shard lost its stats
    is redone alone, to the same bytes."""
    from dedup.download.ingest import ImportStage

    src = tmp_path / "pq"
    _two_parquet_files(src)
    work = WorkDir(tmp_path / "w")
    run_import(src, work, samples_per_shard=2)
    units = ImportStage(src, ImportOptions(samples_per_shard=2)).plan(work).units
    # a.parquet: 5 rows -> shards 0, 1, 2; b.parquet: 2 rows -> shard 3
    assert [(u.payload[0], u.payload[1].shards, u.size) for u in units] == [(0, 3, 5), (3, 1, 2)]
    keys = [pl.read_parquet(work.download_parquet(s))["key"].to_list() for s in range(4)]
    assert keys == [
        ["a/000000000", "a/000000001"],
        ["a/000000002", "a/000000003"],
        ["a/000000004"],
        ["b/000000000", "b/000000001"],
    ]
    before = _files(work)
    work.download_stats(1).unlink()
    stamp = work.download_stats(3).stat().st_mtime_ns
    run_import(src, work, samples_per_shard=2)
    assert work.download_stats(3).stat().st_mtime_ns == stamp  # the other file's unit was not redone
    assert _files(work) == before

    root, _ = folder
    fwork = WorkDir(tmp_path / "f")
    run_import(root, fwork, samples_per_shard=3)
    parts = [u.payload[1] for u in ImportStage(root, ImportOptions(samples_per_shard=3)).plan(fwork).units]
    assert len(parts) > 1 and all(len(p.payload) == 3 and p.shards == 1 for p in parts[:-1])
    rows = sum(pl.read_parquet(fwork.download_parquet(s)).height for s in range(len(parts)))
    assert sum(p.size for p in parts) == rows


def test_an_import_on_ray_workers_writes_the_same_files_as_a_local_one(folder, tmp_path):
    """Import units run on the executor: on a local Ray cluster, byte for byte the local import."""
    pytest.importorskip("ray")
    from dedup.core.executors import RayExecutor

    root, _ = folder
    src = tmp_path / "pq"
    _two_parquet_files(src)
    with RayExecutor(num_cpus=2) as ray:
        for source, per_shard in ((root, 3), (src, 2)):
            local, remote = WorkDir(tmp_path / "l" / source.name), WorkDir(tmp_path / "r" / source.name)
            run_import(source, local, samples_per_shard=per_shard)
            run_import(source, remote, samples_per_shard=per_shard, executor=ray)
            assert _files(local) == _files(remote)


def test_sources_are_read_by_one_reader_per_kind_and_ambiguous_ones_are_refused(tmp_path, cli):
    """#27 item 2: the readers are the modules of dedup/download/readers/ (a new kind is one file);
    a folder two readers claim is refused with both kinds, a URL list is sent to dedup download."""
    from dedup.download.readers import readers

    assert sorted(readers()) == ["folder", "parquet", "shards", "url list"]
    both = tmp_path / "both"
    both.mkdir()
    write_tar(both / "00000.tar", {"a.jpg": encode(photo(1, (64, 48)))})
    (both / "x.jpg").write_bytes(encode(photo(2, (64, 48))))
    r = cli("import", str(both), str(tmp_path / "w1"))
    assert r.returncode == 2 and "shards (00000.tar)" in r.stderr and "folder (x.jpg)" in r.stderr, r.stderr
    urls = tmp_path / "urls.parquet"
    pl.DataFrame({"url": ["http://127.0.0.1/a.jpg"], "caption": ["a"]}).write_parquet(urls)
    r = cli("import", str(urls), str(tmp_path / "w2"))
    assert r.returncode == 2 and "a URL list" in r.stderr and "dedup download" in r.stderr, r.stderr
    lance = tmp_path / "data.lance"  # a format no reader reads: named, not taken for an image folder
    (lance / "data").mkdir(parents=True)
    (lance / "data" / "0.lance").write_bytes(b"\0" * 64)
    r = cli("import", str(lance), str(tmp_path / "w3"))
    assert r.returncode == 2 and "no images found" in r.stderr and "shards:" in r.stderr, r.stderr
    for w in ("w1", "w2", "w3"):
        assert not (tmp_path / w / "download_summary.json").exists()


def test_a_parquet_import_of_the_earlier_layout_is_not_resumed_into_the_new_one(tmp_path):
    """Parquet shards were once filled across files: resuming such a work directory with per-file
    units would import a file's rows twice, so it is refused with a message."""
    src = tmp_path / "pq"
    _two_parquet_files(src)
    work = WorkDir(tmp_path / "w")
    run_import(src, work, samples_per_shard=2)
    summary = json.loads(work.download_summary.read_text())
    work.download_summary.write_text(json.dumps({k: v for k, v in summary.items() if k != "layout"}))
    with pytest.raises(UserError, match="earlier version of dedup, which numbered parquet shards"):
        run_import(src, work, samples_per_shard=2)


def test_the_import_leaves_what_it_declares_and_says_what_it_did(folder, tmp_path):
    """ImportStage's outputs exist after a run; the summary's counts add up and are what the CLI
    prints; a folder import whose summary predates the layout record is not refused (only parquet's
    numbering changed)."""
    from dedup.download.ingest import ImportStage, format_import_summary

    root, _ = folder
    work = WorkDir(tmp_path / "w")
    summary = run_import(root, work, samples_per_shard=2)
    assert all(p.is_file() for p in ImportStage(root, ImportOptions(2)).outputs(work))
    assert (summary["input_rows"], summary["downloaded"], summary["failed"]) == (5, 4, 1)
    assert summary["in_place"] is False and summary["rekeyed"] is False  # a folder's bytes are copied
    text = format_import_summary(summary)
    assert text.startswith("imported 4 of 5 images from folder ") and "1 hidden files not imported" in text
    work.download_summary.write_text(json.dumps({k: v for k, v in summary.items() if k != "layout"}))
    assert run_import(root, work, samples_per_shard=2)["downloaded"] == 4


def test_a_source_that_changes_while_it_is_imported_is_refused(folder, tmp_path, monkeypatch):
    from dedup.download.readers.folder import FolderReader

    root, _ = folder
    original = FolderReader.write

    def write_then_add_a_file(self, work, part, first):
        original(self, work, part, first)
        (root / f"new_{first}.jpg").write_bytes(encode(photo(40 + first, (64, 48))))

    monkeypatch.setattr(FolderReader, "write", write_then_add_a_file)
    with pytest.raises(UserError, match=r"changed while it was being imported"):
        run_import(root, WorkDir(tmp_path / "w"), samples_per_shard=2)


def test_an_interrupted_import_is_resumed_by_the_command_never_up_to_date(folder, tmp_path, monkeypatch, cli):
    """The summary says complete: false until every unit is done, so `dedup import` after a killed
    import resumes it instead of calling it up to date."""
    from dedup.download.readers.folder import FolderReader

    root, _ = folder
    original = FolderReader.write

    def die_at_the_second_unit(self, work, part, first):
        if first == 1:
            raise KeyboardInterrupt
        original(self, work, part, first)

    monkeypatch.setattr(FolderReader, "write", die_at_the_second_unit)
    work = WorkDir(tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        run_import(root, work, samples_per_shard=2)
    assert json.loads(work.download_summary.read_text())["complete"] is False
    r = cli("import", str(root), str(work.root), "--samples-per-shard", "2")
    assert r.returncode == 0 and "up to date" not in r.stdout and "imported 4 of 5" in r.stdout, r.stdout
