"""Where a stage's units run: this process (``local``) or a Ray cluster (``ray``).

Both take the same :class:`dedup.core.stage.Stage` objects and give the same files: a unit's output depends
only on the unit and the stage's settings, never on which worker ran it or in what order, and results
come back in unit order. The executor adds only scheduling, retries and progress.

Ray: ``address`` joins a running cluster (``ray start --head`` on one machine, ``ray start
--address=...`` on the others); without one a local cluster is started for this run and stopped at
the end. A unit whose worker dies is retried (``max_retries``); its outputs are written under a
temporary name and renamed, so a retry starts clean. Every node must see the work directory at the
same path (a shared filesystem) and have this package installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dedup.core.errors import UserError

if TYPE_CHECKING:
    from dedup.core.layout import WorkDir
    from dedup.core.stage import Stage, Unit

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3


class LocalExecutor:
    """Units in this process: one ``setup``, then ``stage.local_workers()`` threads."""

    name = "local"
    parallelism = 1  # pieces of one stage run one after another; FAISS and BLAS use the cores

    def run_units(self, stage: Stage, work: WorkDir, units: list[Unit], progress: bool) -> list[Any]:
        state = stage.setup(work)
        total = sum(u.size for u in units)
        with (
            tqdm(total=total, unit="sample", desc=stage.name, disable=not progress, smoothing=0.1) as bar,
            ThreadPoolExecutor(max_workers=max(1, stage.local_workers())) as pool,
        ):

            def one(unit: Unit) -> Any:
                counted = [0]

                def advance(n: int) -> None:
                    counted[0] += n
                    bar.update(n)

                out = stage.process(work, unit, state, advance)
                bar.update(max(0, unit.size - counted[0]))  # the rest of the unit, if it counted less
                return out

            return list(pool.map(one, units))

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        """``fn(shared, item)`` for each item, in order (the search's partitions, for instance)."""
        return [fn(shared, item) for item in items]

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Per worker process: a stage's setup (a loaded model) is kept for the next unit of the same stage.
_WORKER_STATE: dict[str, Any] = {}


def _state_key(stage: Stage, work: WorkDir) -> str:
    from dedup.core.markers import config_hash

    return f"{type(stage).__qualname__}:{work.root}:{config_hash(vars(stage))}"


def _process_remote(stage: Stage, work: WorkDir, unit: Unit) -> Any:
    key = _state_key(stage, work)
    if key not in _WORKER_STATE:
        _WORKER_STATE.clear()  # one stage's state at a time: a model is large
        _WORKER_STATE[key] = stage.setup(work)
    return stage.process(work, unit, _WORKER_STATE[key])


def _call_remote(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    return fn(shared, item)


RAY_CONNECT_SECONDS = 10.0  # a head that does not answer in this long is not there


def check_reachable(address: str, seconds: float = RAY_CONNECT_SECONDS) -> None:
    """Fail in seconds, in one line, where ``ray.init`` would wait for minutes on a head that is not
    there. ``ray://`` needs Ray's client extra; ``auto`` is left to Ray (it reads the local session)."""
    import socket

    if address == "auto":
        return
    target = address
    if address.startswith("ray://"):
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise UserError(
                f"--ray-address {address}: ray:// needs Ray's client (pip install 'ray[client]'); "
                "or give the head's GCS address host:6379"
            )
        target = address[len("ray://") :]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address}: want host:port (the head's GCS), ray://host:port or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            pass
    except OSError as err:
        raise UserError(
            f"--ray-address {address}: no Ray head answers there within {seconds:.0f} s "
            f"({err.strerror or err}); start one with `ray start --head` or drop --ray-address"
        ) from None


class RayExecutor:
    """Units as Ray tasks with the stage's declared CPUs/GPUs; a dead worker's unit is retried."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        from dedup.core.optional import require

        ray = require("ray", extra="ray", purpose="--executor ray")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise UserError(f"--executor ray: cannot join the Ray cluster at {address}: {e}") from None
            self._started = True
        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._unit = ray.remote(_process_remote)
        self._call = ray.remote(_call_remote)

    def run_units(self, stage: Stage, work: WorkDir, units: list[Unit], progress: bool) -> list[Any]:
        ray = self._ray
        res = stage.resources()
        task = self._unit.options(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=MAX_RETRIES)
        stage_ref = ray.put(stage)
        refs = [task.remote(stage_ref, work, u) for u in units]
        size = {ref: u.size for ref, u in zip(refs, units, strict=True)}
        pending = list(refs)
        with tqdm(
            total=sum(size.values()), unit="sample", desc=f"{stage.name} (ray)", disable=not progress
        ) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    ray.get(ref)  # raises the unit's own error, with its traceback, on the driver
                    bar.update(size[ref])
        return ray.get(refs)

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        shared_ref = self._ray.put(shared)
        call = self._call.options(max_retries=MAX_RETRIES)
        return self._ray.get([call.remote(fn, shared_ref, item) for item in items])

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Executor = LocalExecutor | RayExecutor


def make_executor(name: str = "local", address: str | None = None, num_cpus: int | None = None) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise UserError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
