"""What every sub-command shares: error handling, the config option, the work-directory argument."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dedup.core.errors import IntegrityError, UserError

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def default_of(section: Any, name: str) -> str:
    """``[default: X]`` for a help text, read from the typed config (dedup/core/config.py), so the CLI
    never holds a second copy of a default that could drift from the one that applies."""
    value = section.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, bool) or value is None:
        text = {True: "on", False: "off", None: "none"}[value]
    elif isinstance(value, list):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    return f"\\[default: {text}]"  # escaped: rich markup would swallow a bare [default: ...] as a tag


def option(section: Any, name: str, text: str, *flags: str) -> Any:
    """A typer option whose help ends with the config's default for ``section.name`` (said once)."""
    return typer.Option(*flags, help=f"{text.rstrip()} {default_of(section, name)}")


def describe_os_error(err: OSError) -> str:
    """One line for an environment failure (full disk, read-only or unwritable work dir, a file
    that vanished). NumPy's short write on a full disk carries no errno: said as a full disk too."""
    where = f" ({err.filename})" if err.filename else ""
    short_write = err.errno is None and "requested and" in str(err) and "written" in str(err)  # NumPy's
    if err.errno in _NO_SPACE or short_write:
        what = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
        return (
            f"{what}{where}; nothing was left half-written under a final name: free space and rerun "
            "the same command to resume"
        )
    what = err.strerror or str(err).splitlines()[0] or type(err).__name__
    return f"{what}{where}"


class Group(TyperGroup):
    """Turns :class:`UserError` into ``error: ...`` on stderr and exit code 2, with no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except IntegrityError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except OSError as err:
            typer.echo(f"error: {describe_os_error(err)}", err=True)
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
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        help="local (this machine) | ray (Ray tasks; pip install 'dedup[ray]'); the files are the same. "
        "\\[default: the config's, else local]"
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join with --executor ray: the head's host:6379 (as `ray start --head` "
        "prints it) or 'auto'; none starts a local one. Refused in seconds when nothing answers."
    ),
]


def with_executor(config: Any, executor: str | None, ray_address: str | None) -> Any:
    """The config with ``--executor`` / ``--ray-address`` applied (checked once, for every command)."""
    from dedup.core.executors import EXECUTORS

    name = executor or config.executor
    if name not in EXECUTORS:
        raise UserError(f"--executor {name}: choose from {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise UserError("--ray-address needs --executor ray")
    out = config.model_copy(deep=True)
    out.executor = name
    if ray_address:
        out.ray.address = ray_address
    return out


def open_executor(config: Any, executor: str | None, ray_address: str | None) -> Any:
    """The executor a command runs on: the options, else the config's ``executor`` and ``ray``."""
    from dedup.core.executors import make_executor

    chosen = with_executor(config, executor, ray_address)
    return make_executor(chosen.executor, chosen.ray.address, chosen.ray.num_cpus)


def load_pipeline_config(path: Path | None) -> Any:
    from dedup.core.config import PipelineConfig, load_config

    return load_config(path) if path is not None else PipelineConfig()
