"""Shared fixtures: real images, a real HTTP server on 127.0.0.1, the CLI as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


def _guard_sockets() -> None:
    """Tests reach nothing beyond 127.0.0.1 (#15; pytest-socket's rule, without the dependency): an
    outside connection from the test process, or a child it forks, is an error naming the host."""
    import socket

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: object) -> None:
        inet = sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
        if inet and str(address[0]) not in LOCAL_HOSTS:  # type: ignore[index]
            raise ConnectionRefusedError(
                f"tests may not open sockets beyond 127.0.0.1 (tried {address[0]})"  # type: ignore[index]
            )

    def connect(self: socket.socket, address: object) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


_guard_sockets()


def allowed_skips() -> set[str]:
    """Tests the README's "Tests that may skip" list names (with why); in CI any other skip fails."""
    text = (REPO / "README.md").read_text()
    if "### Tests that may skip" not in text:
        return set()
    section = text.split("### Tests that may skip", 1)[1].split("\n#", 1)[0]
    import re

    return set(re.findall(r"`(tests/[^`]+::[^`]+)`", section))


def pytest_sessionfinish(session, exitstatus):
    """In CI (DEDUP_CI=1), a skipped test the README does not list fails the run, naming it."""
    if os.environ.get("DEDUP_CI") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r.nodeid for r in (reporter.stats.get("skipped", []) if reporter else [])]
    unlisted = sorted(n for n in skipped if n.split("[")[0] not in allowed_skips())
    if unlisted:
        reporter.write_line(
            "CI: skipped tests the README does not list under 'Tests that may skip': " + ", ".join(unlisted),
            red=True,
        )
        if exitstatus == 0:
            session.exitstatus = 1


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random image with structure at several scales (not white noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3))
    for scale in (4, 8, 16):
        small = rng.random((max(1, h // scale), max(1, w // scale), 3))
        out += np.asarray(Image.fromarray((small * 255).astype("uint8")).resize((w, h), Image.BICUBIC)) / 3
    return Image.fromarray(np.clip(out, 0, 255).astype("uint8"))


def encode(im: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dedup", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )


@pytest.fixture
def cli():
    return run_cli


def write_tar(path, members) -> None:
    """A plain tar of ``members`` ((name, bytes) pairs, or a dict), in the order given: source shards
    as other tools write them (a name may repeat)."""
    import io as _io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items() if isinstance(members, dict) else members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))


def write_download_shard(work, shard: int, items: list[tuple[str, bytes | None, str, str]]) -> None:
    """A shard in img2dataset's layout: ``items`` are (key, image bytes or None, caption, extension).

    For tests that start after the download stage; the download tests use img2dataset itself.
    """
    import io as _io
    import json
    import tarfile
    import time

    import polars as pl

    from dedup.core.files import write_json

    folder = work.download_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(work.download_tar(shard), "w") as tar:
        for key, data, caption, ext in items:
            meta = {
                "key": key,
                "url": f"http://127.0.0.1/{key}.{ext}",
                "caption": caption,
                "status": "success" if data is not None else "failed_to_download",
            }
            rows.append(meta)
            if data is None:
                continue
            for suffix, payload in (
                (ext, data),
                ("txt", caption.encode()),
                ("json", json.dumps(meta).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                info.mtime = 0
                tar.addfile(info, _io.BytesIO(payload))
    pl.DataFrame(rows).write_parquet(work.download_parquet(shard))
    ok = sum(1 for r in rows if r["status"] == "success")
    now = time.time()
    write_json(
        work.download_stats(shard),
        {
            "count": len(rows),
            "successes": ok,
            "failed_to_download": len(rows) - ok,
            "failed_to_resize": 0,
            "duration": 0.0,
            "start_time": now,
            "end_time": now,
            "status_dict": {},
        },
    )


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The demo pipeline on a small corpus (200 distinct tiles, real photos, real img2dataset), run
    as `make demo` runs it: from the folder above, with a relative work directory (a path joined
    twice once broke only this form)."""
    from dedup.core.layout import WorkDir
    from dedup.pipeline import demo_config, run_demo

    cfg = demo_config()
    cfg.demo.distinct = 200
    cfg.download.processes = 1
    parent = tmp_path_factory.mktemp("demo")
    here = os.getcwd()
    os.chdir(parent)
    try:
        run_demo(Path("w"), cfg, ["download", "embed", "cluster", "write"])
    finally:
        os.chdir(here)
    return WorkDir(parent / "w")
