"""Fault injection (#15): kill -9 at random points of each stage, then rerun: the outputs equal an
uninterrupted run's, byte for byte, and no key is lost; a full disk during write fails in one line
with no final-named partial file, and the rerun completes identically."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import encode, photo, write_download_shard

from dedup.core.layout import WorkDir
from dedup.core.shards import iter_samples
from dedup.download.serve import serve_directory

ROOT = Path(__file__).resolve().parents[2]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dedup", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}


def _run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(_cmd(*args), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600, **kw)
    return r


def _timed(*args: str) -> float:
    started = time.time()
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.time() - started


def _kill_during(args: tuple[str, ...], after: float) -> bool:
    """Start the command, SIGKILL its whole process group after ``after`` s; True if it was killed."""
    p = subprocess.Popen(
        _cmd(*args),
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        p.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return True


def _files(folder: Path, patterns: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for pattern in patterns:
        for p in sorted(folder.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(folder))] = p.read_bytes()
    return out


OUTPUTS = {
    "embed": ("embed/img_emb/*.npy", "embed/local/*.npy", "embed/metadata/*.parquet"),
    "cluster": ("cluster/pairs.parquet", "cluster/clusters.parquet"),
    "write": ("dedup/*.tar", "dedup/*.parquet", "ledger.parquet"),
}
ARGS = {"embed": ("--embedder", "descriptor"), "cluster": (), "write": ("--samples-per-shard", "7")}


@pytest.fixture
def two_workdirs(tmp_path):
    items = []
    for i in range(30):
        im = photo(i % 11, (240, 180))  # 11 distinct photos, copies of them re-encoded
        items.append((f"{i:09d}", encode(im, quality=70 + (i % 3) * 10), f"caption {i}", "jpg"))
    works = []
    for name in ("clean", "killed"):
        w = WorkDir(tmp_path / name)
        write_download_shard(w, 0, items[:16])
        write_download_shard(w, 1, items[16:])
        works.append(w)
    return works


def test_kill_9_during_embed_cluster_and_write_then_rerun_is_byte_identical(two_workdirs):
    clean, killed = two_workdirs
    rng = random.Random(15)
    kills = 0
    for stage in ("embed", "cluster", "write"):
        took = _timed(stage, str(clean.root), *ARGS[stage])
        for _ in range(2):  # two random points of the stage's run, each followed by a rerun
            kills += _kill_during((stage, str(killed.root), *ARGS[stage]), rng.uniform(0.4, 0.95) * took)
        r = _run(stage, str(killed.root), *ARGS[stage])
        assert r.returncode == 0, r.stderr[-2000:]
        assert _files(killed.root, OUTPUTS[stage]) == _files(clean.root, OUTPUTS[stage]), stage
        assert not list(killed.root.rglob(".*.tmp")) or stage == "embed"  # leftovers are swept on rerun
    assert kills >= 3  # the points fell inside the runs, not after them
    r = _run("verify", str(killed.root))
    assert r.returncode == 0, r.stdout + r.stderr


def test_kill_9_during_download_then_rerun_loses_no_key(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for i in range(40):
        (site / f"{i}.jpg").write_bytes(encode(photo(i, (320, 240)), quality=90))
    with serve_directory(site) as base:
        urls = tmp_path / "u.parquet"
        pl.DataFrame(
            {
                "URL": [f"{base}/{i}.jpg" for i in range(40)] + [f"{base}/gone.jpg"],
                "TEXT": [f"c{i}" for i in range(41)],
            }
        ).write_parquet(urls)
        common = ("--samples-per-shard", "5", "--processes", "1", "--threads", "2")
        took = _timed("download", str(urls), str(tmp_path / "clean"), *common)
        killed = 0
        for frac in (0.5, 0.8):
            killed += _kill_during(("download", str(urls), str(tmp_path / "killed"), *common), frac * took)
        r = _run("download", str(urls), str(tmp_path / "killed"), *common)
        assert r.returncode == 0, r.stderr[-2000:]
    assert killed >= 1

    def members(root: Path) -> dict[str, dict[str, bytes]]:
        w = WorkDir(root)
        return {
            s.key: {e: d for e, d in s.members.items() if e != "json"}
            for shard in w.download_shards()
            for s in iter_samples(w.input_tar(shard))
        }

    got, want = members(tmp_path / "killed"), members(tmp_path / "clean")
    assert len(want) == 40 and got == want
    rows = [pl.read_parquet(WorkDir(tmp_path / "killed").download_parquet(s)) for s in range(9)]
    assert sum(r.height for r in rows) == 41  # the dead link too


def test_kill_9_during_attack_train_then_resume_gives_the_same_weights(tmp_path):
    import torch

    w = WorkDir(tmp_path / "w")
    write_download_shard(w, 0, [(f"{i:09d}", encode(photo(i, (64, 48))), f"c{i}", "jpg") for i in range(12)])
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "attack: {resolution: 8, channels: 8, channel_mults: [1, 2], attention: false, steps: 400, "
        "batch_size: 8, device: cpu}\n"
    )
    args = ("attack", "train", str(w.root), "-c", str(config), "--no-progress")
    took = _timed(*args, "--out", str(tmp_path / "clean.pt"))
    killed = _kill_during((*args, "--out", str(tmp_path / "killed.pt")), 0.85 * took)
    assert killed
    r = _run(*args, "--out", str(tmp_path / "killed.pt"))
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "clean.pt", weights_only=True)
    b = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert a["step"] == b["step"] == 400
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    assert a["losses"] == b["losses"]


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_write_fails_cleanly_and_the_rerun_completes(two_workdirs):
    clean, full = two_workdirs
    for w in (clean, full):
        for stage in ("embed", "cluster"):
            assert _run(stage, str(w.root), *ARGS[stage]).returncode == 0
    assert _run("write", str(clean.root)).returncode == 0
    r = _run("write", str(full.root), preexec_fn=_limit_file_size(60_000))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "rerun" in errors[0], r.stderr
    assert not list(full.dedup_dir.glob("*.tar"))  # no final-named partial file
    r = _run("write", str(full.root))
    assert r.returncode == 0, r.stderr
    assert _files(full.root, OUTPUTS["write"]) == _files(clean.root, OUTPUTS["write"])
    shutil.rmtree(full.root)
