"""The stage contract every driver and executor uses (after NeMo Curator's ``ProcessingStage`` and
datatrove's executor/step split).

A stage names its units of work (input shards, output shards), plans them on the driver, sets up once
per worker (load the model) apart from the per-unit work, and writes one completion marker per unit
keyed by the settings that affect that unit. The CLI, ``dedup run``, the Makefile targets and both
executors (``dedup.core.executors``) call :func:`run_stage`, so resume, skipping and the summary are decided
in one place, whichever machine runs the units.

Units must be picklable (an executor may ship them to another process or machine) and a unit's output
may depend only on the unit and the stage's settings: that is what makes a Ray run byte-identical to a
local one and a retried unit identical to a first attempt.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from dedup.core.executors import Executor
    from dedup.core.layout import WorkDir


# Progress inside a unit (samples done so far); None where the executor counts whole units.
Advance = Optional[Callable[[int], Any]]  # noqa: UP045 (a runtime alias: works on Python 3.10)


@dataclass(frozen=True)
class Resources:
    """What one unit needs on a worker (Ray schedules by it; the local executor by ``workers``)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Unit:
    """One unit of work: ``index`` names it (a shard number), ``size`` drives progress bars (samples),
    ``payload`` is what the worker needs beyond the work directory (an output shard's spans)."""

    index: int
    size: int = 0
    payload: Any = None


@dataclass
class Plan:
    """A stage's units for this run, and whatever the driver computed that ``finish`` needs again."""

    units: list[Unit]
    context: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One step of the pipeline over a work directory.

    ``plan`` runs on the driver (read inputs, write what all units share), ``done`` reads a unit's
    marker, ``setup`` runs once per worker, ``process`` once per unit (it writes the unit's outputs and
    marker atomically), ``finish`` on the driver after every unit (summary, stage marker).
    """

    name: str = ""
    unit_name: str = "unit"  # progress bars and messages: "shard", "output shard"
    # A stage whose one unit fans out by itself (cluster maps its search partitions over the
    # executor, then verifies and groups) runs that unit on the driver instead of shipping it.
    on_driver: bool = False

    def inputs(self, work: WorkDir) -> list[Path]:
        """The files this stage reads (paths from layout), for messages and checks."""
        return []

    def outputs(self, work: WorkDir) -> list[Path]:
        """The files a complete run leaves (paths from layout); a test holds every stage to them."""
        return []

    def resources(self) -> Resources:
        return Resources()

    def local_workers(self) -> int:
        """Units processed at once by the local executor (threads sharing one ``setup``)."""
        return 1

    @abstractmethod
    def plan(self, work: WorkDir) -> Plan: ...

    @abstractmethod
    def done(self, work: WorkDir, unit: Unit) -> bool: ...

    def setup(self, work: WorkDir) -> Any:
        """Per-worker state (a loaded model); None when the stage needs none."""
        return None

    @abstractmethod
    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> Any:
        """Do one unit; call ``advance(n)`` as samples finish when it can (progress bars)."""

    @abstractmethod
    def finish(
        self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float
    ) -> dict: ...


def run_stage(stage: Stage, work: WorkDir, executor: Executor | None = None, progress: bool = True) -> dict:
    """Plan, skip the units whose markers say they are done, run the rest on ``executor``, summarise."""
    from dedup.core.executors import LocalExecutor

    executor = executor or LocalExecutor()
    plan = stage.plan(work)
    todo = [u for u in plan.units if not stage.done(work, u)]
    started = time.time()
    if stage.on_driver:
        state = stage.setup(work) if todo else None
        results = [stage.process(work, unit, state) for unit in todo]
    else:
        results = executor.run_units(stage, work, todo, progress) if todo else []
    return stage.finish(work, plan, todo, results, time.time() - started)
