"""Work-directory guards: one dedup process at a time (the second refuses with the holder's PID,
exit 2; the lock goes with the process, however it ends), no dedup against itself, thresholds in
range."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from dedup.core.files import work_lock
from dedup.core.layout import WorkDir

HOLD = """
import sys, time
from dedup.core.files import work_lock
from dedup.core.layout import WorkDir
with work_lock(WorkDir(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(root):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path, cli):
    holder = _hold(tmp_path / "w")
    urls = tmp_path / "u.csv"
    urls.write_text("URL,TEXT\nhttp://127.0.0.1:9/a.jpg,a\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff")
    try:
        for args in (
            ("cluster",),
            ("embed", "--embedder", "descriptor"),
            ("write",),
            ("report",),
        ):
            r = cli(args[0], str(tmp_path / "w"), *args[1:])
            assert r.returncode == 2, (args, r.stderr)
            assert f"PID {holder.pid}" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1
        for r in (
            cli("download", str(urls), str(tmp_path / "w")),
            cli("import", str(photos), str(tmp_path / "w")),
        ):
            assert r.returncode == 2 and f"PID {holder.pid}" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _hold(tmp_path / "w")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.time()
    with work_lock(WorkDir(tmp_path / "w")):
        pass
    assert time.time() - started < 5


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    work = WorkDir(tmp_path / "w")
    with work_lock(work), work_lock(work):  # a pipeline holding it while a stage takes it again
        assert (work.manifest_dir / "lock").read_text().strip() == str(os.getpid())


def test_against_its_own_work_directory_is_refused(tmp_path, cli):
    (tmp_path / "w").mkdir()
    r = cli("cluster", str(tmp_path / "w"), "--against", str(tmp_path / "w"))
    assert r.returncode == 2 and "that is this work directory" in r.stderr and "Traceback" not in r.stderr


def test_cosine_thresholds_outside_0_1_are_refused(tmp_path, cli):
    for flag, value in (("--embedding-threshold", "1.5"), ("--candidate-threshold", "-0.2")):
        r = cli("cluster", str(tmp_path / "w"), flag, value)
        assert r.returncode == 2 and "threshold" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_demo_rejects_a_misspelt_stage_before_building_anything(tmp_path, cli):
    r = cli("demo", str(tmp_path / "w"), "--stages", "downlaod")
    assert r.returncode == 2 and "unknown stage(s) downlaod" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()
