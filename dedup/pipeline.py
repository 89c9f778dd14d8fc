"""``dedup run`` and ``dedup demo``: the registry's stages (dedup/stages.py) in order over one work
directory; each stage skips what its markers say is done."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dedup.core.config import DemoConfig, PipelineConfig, dump_config
from dedup.core.errors import UserError
from dedup.core.files import atomic_path
from dedup.core.layout import WorkDir

if TYPE_CHECKING:
    from dedup.core.executors import Executor
from dedup.stages import Options, check_stages, registry, run_stage

# The demo's settings; configs/demo.yaml holds the same values (a test keeps them in sync), so
# `dedup demo` works from an installed package as well as from a checkout.
DEMO_SETTINGS: dict[str, Any] = {
    "workdir": "demo-work",
    "download": {
        "image_size": 256,
        "resize_mode": "keep_ratio",
        "resize_only_if_bigger": True,
        "skip_reencode": True,
        "processes": 2,
        "threads": 16,
        "samples_per_shard": 1000,
        "timeout": 5,
    },
    "embed": {"embedder": "descriptor", "batch_size": 128, "workers": 1},
    "cluster": {"ground_truth": "demo/ground_truth.parquet"},
    "write": {"samples_per_shard": 1000},
    "demo": {"seed": 0, "distinct": 2000, "tile": 160},
    "stages": ["download", "embed", "cluster", "write", "attack", "report"],
}


def demo_config() -> PipelineConfig:
    return PipelineConfig.model_validate(DEMO_SETTINGS)


def import_source(cfg: PipelineConfig, work: WorkDir, executor: Executor | None = None) -> None:
    """The download stage of a config with ``source:``: import once; a rerun with the same source
    is up to date, another source into the same work directory is refused by the import itself."""
    from dedup.core.files import read_json
    from dedup.download.ingest import check_source, format_import_summary, run_import
    from dedup.download.sources import open_source, source_identity

    src = open_source(cfg.source)  # type: ignore[arg-type]
    source = source_identity(src)
    if work.download_summary.exists() and work.download_shards():
        previous = read_json(work.download_summary)
        if previous.get("source") == source and previous.get("complete"):
            check_source(work, src)  # a changed source is never "up to date"
            typer.echo(f"   up to date: imported from {source} already ({previous.get('downloaded')} images)")
            return
    opts = cfg.source_options
    summary = run_import(
        cfg.source, work, cfg.download.samples_per_shard, opts.caption_col, opts.rekey, executor
    )
    typer.echo(format_import_summary(summary))


def run_pipeline(cfg: PipelineConfig, stages: list[str] | None = None) -> WorkDir:
    work = WorkDir(cfg.workdir)
    wanted = stages or list(cfg.stages)
    check_stages(wanted)
    fresh = not work.root.exists()
    if fresh and "download" in wanted and not (cfg.source or cfg.download.url_list):
        raise UserError(
            "the config names no data (neither source: nor download.url_list); nothing was created"
        )
    work.root.mkdir(parents=True, exist_ok=True)
    with atomic_path(work.config_copy) as tmp:
        tmp.write_text(dump_config(cfg))
    try:
        _run_stages(cfg, work, wanted)
    except UserError:
        if fresh and {p.name for p in work.root.iterdir()} <= {work.config_copy.name}:
            shutil.rmtree(work.root)  # a refusal before any stage wrote: leave nothing behind
        raise
    return work


def _run_stages(cfg: PipelineConfig, work: WorkDir, wanted: list[str]) -> None:
    from dedup.options import open_executor

    with open_executor(cfg, None, None) as executor:
        for stage in (s for s in registry() if s in wanted):
            typer.echo(f"== {stage}" + (f" (executor: {executor.name})" if executor.name != "local" else ""))
            started = time.time()
            run_stage(stage, cfg, work, executor, Options())
            typer.echo(f"   {stage} finished in {time.time() - started:.1f} s")


def run_demo(workdir: Path, cfg: PipelineConfig | None = None, stages: list[str] | None = None) -> WorkDir:
    from dedup.demo import build_corpus, ensure_port
    from dedup.download.serve import serve_directory

    if stages:
        check_stages(stages)  # before the corpus is built, not after
    cfg = (cfg or demo_config()).model_copy(deep=True)
    cfg.workdir = str(workdir)
    cfg.demo = cfg.demo or DemoConfig()
    work = WorkDir(workdir)
    typer.echo(f"== demo corpus in {work.demo_dir}")
    meta = build_corpus(cfg.demo, work)
    typer.echo(
        f"   {meta['rows']} URLs: {meta['distinct']} distinct {_base_word(meta)} of {meta['photos']} bundled "
        "photographs, "
        f"{meta['duplicated_groups']} of them copied (up to {_largest_group(work)} copies each)"
    )
    cfg.download.url_list = str(work.demo_url_list)
    port = ensure_port(work)
    with serve_directory(work.demo_dir / "site", port=port):
        run_pipeline(cfg, stages)
    typer.echo(final_summary(work))
    return work


def _base_word(corpus: dict) -> str:
    return "photographs" if corpus.get("kind") == "photos" else "tiles"


def final_summary(work: WorkDir) -> str:
    """What the run did, from the stages' own summary files: downloads, removals, scores."""
    from dedup.core.files import read_json

    lines = ["", f"== summary of {work.root}"]
    if work.download_summary.exists():
        d = read_json(work.download_summary)
        lines.append(f"   downloaded {d['successes']} of {d['rows']} URLs ({d['failed']} failed)")
    if work.write_summary.exists():
        w = read_json(work.write_summary)
        by = ", ".join(f"{r} {v['samples']}" for r, v in w["by_reason"].items() if r != "kept")
        lines.append(f"   kept {w['kept']} of {w['input_samples']} samples; removed {w['removed']} ({by})")
        lines.append(f"   deduplicated WebDataset: {work.dedup_dir} ({w['output_shards']} shards)")
        lines.append(f"   ledger (one row per input sample): {work.ledger}")
    if work.evaluation.exists():
        e = read_json(work.evaluation)
        if "pairwise" in e:
            pw, rm = e["pairwise"], e["removals"]
            lines.append(
                f"   against the planted duplicates: pairs precision {pw['precision']:.3f} "
                f"recall {pw['recall']:.3f}; "
                f"removals precision {rm['precision']:.3f} recall {rm['recall']:.3f}"
            )
    return "\n".join(lines)


def _largest_group(work: WorkDir) -> int:
    import polars as pl

    return int(pl.read_parquet(work.demo_ground_truth)["group_size"].max())  # type: ignore[arg-type]
