"""What every sub-command shares: error handling, the config option, the work-directory argument."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dedup.errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class Group(TyperGroup):
    """Turns :class:`UserError` into ``error: ...`` on stderr and exit code 2, with no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in _NO_SPACE:
                raise
            where = f" writing {err.filename}" if err.filename else ""
            typer.echo(
                f"error: {os.strerror(err.errno)}{where}; nothing was left half-written under a final "
                "name: free space and rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML pipeline config (see configs/); options given here override it."
    ),
]
WorkdirArg = Annotated[Path, typer.Argument(help="Work directory shared by all stages.")]


def load_pipeline_config(path: Path | None) -> Any:
    from dedup.config import PipelineConfig, load_config

    return load_config(path) if path is not None else PipelineConfig()
