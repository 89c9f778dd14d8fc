"""dedup import: a folder of images and parquet files with image bytes become a work directory that
embed, cluster, write and verify run on unchanged; original bytes and every sample accounted for."""

from __future__ import annotations

import json
import tarfile

import polars as pl
import pytest
from conftest import encode, photo

from dedup.cluster import run_cluster
from dedup.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.embed import run_embed
from dedup.ingest import key_of, run_import
from dedup.layout import WorkDir
from dedup.verify import verify
from dedup.write import run_write


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
        (lambda p: (p / "notes.txt").write_text("hi"), "not a folder of images or a .parquet file"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, cli, make, message):
    make(tmp_path)
    source = next(p for p in tmp_path.iterdir())
    r = cli("import", str(source), str(tmp_path / "work"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_import_refuses_a_work_directory_that_has_shards(folder, tmp_path, cli):
    root, _ = folder
    run_import(root, WorkDir(tmp_path / "work"))
    r = cli("import", str(root), str(tmp_path / "work"))
    assert r.returncode == 2 and "already holds shards" in r.stderr


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
