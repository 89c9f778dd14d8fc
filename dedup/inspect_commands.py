"""The Inspect commands (evaluate, verify, status): they read a work directory and change nothing.
Registered on the one CLI app (dedup/cli.py imports this module once the app exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dedup.cli import app
from dedup.core.errors import UserError
from dedup.options import WorkdirArg


@app.command(rich_help_panel="Inspect")
def evaluate(
    workdir: WorkdirArg,
    ground_truth: Annotated[
        Path | None,
        typer.Option(
            help="Ground truth: rows (key or url, group[, transform, copy]) or labelled pairs "
            "(key_a, key_b, duplicate). The demo's is WORKDIR/demo/ground_truth.parquet."
        ),
    ] = None,
) -> None:
    """Score the groups against ground truth and sweep the threshold.

    Prints precision, recall and F1 (pairwise and of the removals, per transformation where known) and a
    threshold sweep (threshold -> pairs, samples removed, precision, recall) to choose a threshold from data.
    """
    from dedup.cluster.evaluate import format_evaluation, run_evaluate
    from dedup.core.layout import WorkDir

    work = WorkDir(workdir)
    if ground_truth is None and work.demo_ground_truth.exists():
        ground_truth = work.demo_ground_truth
    typer.echo(format_evaluation(run_evaluate(work, ground_truth)))


@app.command("verify", rich_help_panel="Inspect")
def verify_cmd(
    workdir: WorkdirArg,
    skip_bytes: Annotated[
        bool, typer.Option("--skip-bytes", help="Skip the byte-for-byte member check.")
    ] = False,
) -> None:
    """Check the write stage's invariants; exit 1 on any violation.

    Every input key is in the ledger exactly once; every kept key is in the output shards exactly
    once; every output member has the input's bytes (sha256); the counts add up.
    """
    from dedup.core.layout import WorkDir
    from dedup.write.verify import verify

    problems = verify(WorkDir(workdir), check_bytes=not skip_bytes)
    if problems:
        for p in problems[:50]:
            typer.echo(f"violation: {p}", err=True)
        if len(problems) > 50:
            typer.echo(f"... and {len(problems) - 50} more", err=True)
        raise typer.Exit(1)
    typer.echo("ok: ledger, output shards and bytes are consistent")


@app.command(rich_help_panel="Inspect")
def status(workdir: WorkdirArg) -> None:
    """Show which stages and shards are complete in WORKDIR, and with which config."""
    from dedup.core.layout import WorkDir
    from dedup.core.markers import stage_status

    work = WorkDir(workdir)
    if not work.root.is_dir():
        raise UserError(f"{workdir}: no such work directory")
    lines = stage_status(work)
    if not lines:
        typer.echo(f"{workdir}: nothing complete yet")
        return
    for stage, text in lines:
        typer.echo(f"{stage:<10} {text}")
