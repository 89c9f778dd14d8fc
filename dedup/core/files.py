"""How every stage writes and guards files: a file appears under its final name only complete
(``atomic_path``: a temporary beside it, renamed), a killed run's temporaries are swept, and one dedup
process at a time holds a work directory (an advisory lock released however the process ends). The
paths themselves are dedup/core/layout.py's."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dedup.core.layout import WorkDir


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash (even kill -9) leaves at worst a ``.tmp`` file, never a half-written file under the final
    name, so "the final file exists" can be trusted as "the file is complete".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; a finished output gets the umask's usual mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """A work dir's JSON file; a damaged one is named in one line (rerun its stage), not a traceback."""
    from dedup.core.errors import UserError

    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: damaged ({err}); delete it and rerun the stage that writes it") from None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete ``.*.tmp`` files a killed run left behind; they are never complete outputs."""
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, depth]: re-entrant within one process


@contextmanager
def work_lock(work: WorkDir) -> Iterator[None]:
    """One dedup process at a time in a work directory (stages share scratch files and markers).

    An advisory ``flock`` on ``_manifest/lock``, which holds the holder's PID; released when the
    process ends, however it ends, so a killed run never leaves a stale lock. Re-entrant, so a
    pipeline that runs several stages holds it once."""
    path = (work.manifest_dir / "lock").resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    from dedup.core.errors import UserError

    created = [d for d in (work.root.resolve(), path.parent) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        _remove_if_only_lock(path, created)
        raise UserError(
            f"{work.root}: in use by another dedup process (PID {holder}); wait for it to finish or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        # a command that wrote nothing (bad input) leaves no work directory behind
        _remove_if_only_lock(path, created)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_if_only_lock(lock: Path, created: list[Path]) -> None:
    """Undo the directories the lock itself created, when nothing but the lock landed in them."""
    if not created:
        return
    if any(p != lock and p != lock.parent for p in created[0].rglob("*")):
        return
    lock.unlink(missing_ok=True)
    for d in sorted(created, key=lambda d: len(d.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


_CREATES_WORKDIR = ("run_download", "run_import")  # the stages that start a work directory


def locked(fn):
    """Run a stage function holding its work directory's lock (the ``work`` argument)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        work = kwargs.get("work") or next((a for a in args if isinstance(a, WorkDir)), None)
        if work is None:
            return fn(*args, **kwargs)
        if fn.__name__ not in _CREATES_WORKDIR and not work.root.is_dir():
            from dedup.core.errors import UserError

            raise UserError(f"{work.root}: no such work directory")
        with work_lock(work):
            return fn(*args, **kwargs)

    return wrapper
