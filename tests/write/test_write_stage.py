"""The write stage's own decisions, fast: byte ranges, early end of input, reruns (same and changed
settings), the img2dataset stats it writes, the dry run and its summary text."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
from dedup.core.layout import WorkDir, shards_in
from dedup.core.markers import read_marker
from dedup.embed.stage import run_embed
from dedup.write.stage import _ranges, copy_spans, format_write_summary, index_shards, run_write
from dedup.write.tar_index import Span


def test_adjacent_spans_of_one_input_merge_into_one_range():
    spans = [
        Span("a", 0, 0, 1024),
        Span("b", 0, 1024, 3072),  # adjacent: merged
        Span("c", 0, 4096, 5120),  # a gap: new range
        Span("d", 1, 5120, 6144),  # adjacent offsets but another input: new range
        Span("e", 1, 6144, 7168),
    ]
    assert _ranges(spans) == [(0, 0, 3072), (0, 4096, 5120), (1, 5120, 7168)]
    assert _ranges([]) == []


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    work = WorkDir(tmp_path_factory.mktemp("write") / "w")
    for shard in range(3):
        items = [(f"{shard}{i:03d}", encode(photo(10 * shard + i)), f"photo {i}", "jpg") for i in range(6)]
        items.append((f"{shard}copy", encode(photo(10 * shard)), "a copy", "jpg"))  # an exact copy
        if shard == 0:
            items.append(("0gone", None, "never downloaded", "jpg"))
        write_download_shard(work, shard, items)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    return work


def _copy(work: WorkDir, dst) -> WorkDir:
    shutil.copytree(work.root, dst, symlinks=True)
    return WorkDir(dst)


def _outputs(work: WorkDir) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(work.dedup_dir.iterdir()) if p.suffix in (".tar", ".parquet")
    }


def test_a_span_past_the_end_of_its_input_is_an_error_naming_the_input(clustered, tmp_path):
    work = _copy(clustered, tmp_path / "w")
    size = work.input_tar(0).stat().st_size
    with pytest.raises(OSError, match="input ended inside a sample") as err:
        copy_spans([Span("x", 0, size - 512, size + 4096)], work, tmp_path / "out.tar")
    assert str(work.input_tar(0)) in str(err.value)


def test_reruns_skip_what_is_done_and_redo_what_changed(clustered, tmp_path):
    work = _copy(clustered, tmp_path / "w")
    first = run_write(WriteConfig(samples_per_shard=4), work, progress=False)
    assert first["written_shards"] == first["output_shards"] >= 4
    stamps = {p: p.stat().st_mtime_ns for p in work.dedup_dir.iterdir()}
    again = run_write(WriteConfig(samples_per_shard=4), work, progress=False)
    assert again["written_shards"] == 0
    assert {p: p.stat().st_mtime_ns for p in work.dedup_dir.iterdir()} == stamps
    stage_hash = read_marker(work, "write_stage")["config_hash"]
    # other settings: every shard is redone, and the result is what a fresh run writes
    changed = run_write(WriteConfig(samples_per_shard=5), work, progress=False)
    assert changed["written_shards"] == changed["output_shards"]
    assert read_marker(work, "write_stage")["config_hash"] != stage_hash
    fresh = _copy(clustered, tmp_path / "fresh")
    run_write(WriteConfig(samples_per_shard=5), fresh, progress=False)
    assert _outputs(work) == _outputs(fresh)
    assert len(shards_in(work.dedup_dir)) == changed["output_shards"]  # no shard left past the new end
    markers = sorted(int(p.stem) for p in (work.manifest_dir / "write").glob("*.json"))
    assert markers == list(range(changed["output_shards"]))  # nor a marker


def test_output_stats_are_img2datasets_and_add_up(clustered, tmp_path):
    work = _copy(clustered, tmp_path / "w")
    s = run_write(WriteConfig(samples_per_shard=4), work, progress=False)
    total = 0
    for i in range(s["output_shards"]):
        stats = json.loads(work.dedup_stats(i).read_text())
        n = stats["count"]
        assert stats["successes"] == n and stats["status_dict"] == {"success": n}
        assert stats["failed_to_download"] == 0 and stats["failed_to_resize"] == 0
        assert stats["duration"] == pytest.approx(stats["end_time"] - stats["start_time"])
        assert 0 <= stats["duration"] < 60
        total += n
    assert total == s["kept"]


def test_dry_run_reports_without_writing_and_the_summary_reads(clustered, tmp_path):
    work = _copy(clustered, tmp_path / "w")
    dry = run_write(WriteConfig(), work, dry_run=True, progress=False)
    assert dry["dry_run"] is True and dry["input_samples"] == 22
    assert dry["by_reason"]["duplicate"]["samples"] == 3 and dry["kept"] == 18
    assert dry["by_reason"]["download_failed"] == {"samples": 1, "bytes": 0}  # no bytes in any tar
    copies = [s for shard in index_shards(work).values() for s in shard if s.key.endswith("copy")]
    assert dry["by_reason"]["duplicate"]["bytes"] == sum(s.size for s in copies) > 0
    assert not work.dedup_dir.exists() and not work.ledger.exists()
    text = format_write_summary(dry)
    assert text.splitlines()[0] == "22 input samples: 18 kept, 4 removed"
    assert f"{dry['by_reason']['duplicate']['bytes'] / 1e6:>9.2f} MB" in text
    assert "duplicate" in text and "kept " not in text and "(dry run: nothing written)" in text
    done = run_write(WriteConfig(samples_per_shard=10), work, progress=False)
    text = format_write_summary(done)
    assert "wrote 2 of 2 output shard(s)" in text and "dry run" not in text
    assert f"{done['output_bytes'] / 1e6:.2f} MB" in text and 0 <= done["seconds"] < 600
