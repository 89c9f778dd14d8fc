"""The one registry of stages: the order ``dedup run`` follows, the names a config's ``stages:`` may
list, and the code each stage's CLI command and ``dedup run`` both call, so the two drivers cannot
differ (the same evaluation after cluster, the same executor handling, the same printed summary).

Built-in stages are listed here; another package adds one through the ``dedup.pipeline_stages``
entry point (``name = "package.module:function"``, called as ``function(config, work, executor)``),
and it runs in ``dedup run`` before ``report``. ``attack`` is such a stage, from the attack package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dedup.core.errors import UserError

if TYPE_CHECKING:
    from dedup.core.config import PipelineConfig
    from dedup.core.executors import Executor
    from dedup.core.layout import WorkDir


@dataclass(frozen=True)
class Options:
    """How a stage runs (not what it computes): a progress bar, recomputing finished work."""

    progress: bool = True
    force: bool = False


Runner = Callable[["PipelineConfig", "WorkDir", "Executor", Options], None]


@dataclass(frozen=True)
class StageEntry:
    name: str
    run: Runner
    what: str  # one line: what the stage leaves in the work directory


def _download(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    if cfg.source:
        from dedup.pipeline import import_source

        import_source(cfg, work, executor)
        return
    from dedup.download.stage import format_summary, run_download

    settings = cfg.download
    if executor.name == "ray" and settings.distributor == "multiprocessing":
        settings = settings.model_copy(update={"distributor": "ray"})  # img2dataset's own, on the cluster
    typer.echo(format_summary(run_download(settings, work)))


def _embed(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    from dedup.embed.stage import format_embed_summary, run_embed

    summary = run_embed(cfg.embed, work, progress=options.progress, executor=executor)
    typer.echo(format_embed_summary(summary))


def _cluster(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    from dedup.cluster.evaluate import format_evaluation, run_evaluate
    from dedup.cluster.stage import format_cluster_summary, run_cluster

    summary = run_cluster(
        cfg.cluster, work, progress=options.progress, force=options.force, executor=executor
    )
    typer.echo(format_cluster_summary(summary))
    if cfg.cluster.ground_truth:  # relative to the work directory (the demo's lives there)
        truth = Path(cfg.cluster.ground_truth)
        typer.echo(format_evaluation(run_evaluate(work, truth if truth.is_absolute() else work.root / truth)))


def _write(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    from dedup.write.stage import format_write_summary, run_write

    typer.echo(format_write_summary(run_write(cfg.write, work, progress=options.progress, executor=executor)))


def _report(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    from dedup.report.stage import run_report

    summary = run_report(cfg.report, work)
    ran = [k for k, v in summary["stages"].items() if v]
    typer.echo(f"report: {work.report_dir / 'index.html'} (stages shown: {', '.join(ran) or 'none'})")


def _extension_runner(function: Callable[..., Any]) -> Runner:
    def run(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
        function(cfg, work, executor)

    return run


def _missing_attack(cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    raise UserError("the attack stage needs the attack package, which is not installed")


BUILTIN = (
    StageEntry("download", _download, "download/ shards (img2dataset, or an import of source:)"),
    StageEntry("embed", _embed, "embed/ image embeddings, hashes, local features"),
    StageEntry("cluster", _cluster, "cluster/ candidates, verified pairs, clusters"),
    StageEntry("write", _write, "dedup/ shards, ledger.parquet"),
)
LAST = StageEntry("report", _report, "report/ index.html, summary.json, plots")


def registry() -> dict[str, StageEntry]:
    """Every stage in ``dedup run``'s order: the built-ins, then stages other packages add (by name),
    then the report, which shows them all. ``attack`` stays a known name without its package."""
    from dedup.core.extensions import PIPELINE_STAGES, extensions

    added = {
        name: StageEntry(name, _extension_runner(fn), "added by a package")
        for name, fn in extensions(PIPELINE_STAGES).items()
    }
    added.setdefault("attack", StageEntry("attack", _missing_attack, "attack/ (needs the attack package)"))
    entries = [*BUILTIN, *(added[n] for n in sorted(added)), LAST]
    return {e.name: e for e in entries}


def stage_names() -> list[str]:
    return list(registry())


def check_stages(stages: list[str]) -> None:
    known = stage_names()
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(known)}")


def run_stage(name: str, cfg: PipelineConfig, work: WorkDir, executor: Executor, options: Options) -> None:
    """The one way a stage runs, from its CLI command and from ``dedup run`` alike."""
    registry()[name].run(cfg, work, executor, options)
