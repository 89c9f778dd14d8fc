"""The ``dedup`` command line: one sub-command per stage, all thin wrappers over the Python API.

Every stage reads and writes a work directory (layout in ``dedup/core/layout.py``); options override the
YAML config given with ``--config`` (or the defaults). Bad input prints one line and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dedup.command_options import (
    ClusterAgainst,
    ClusterCandidateThreshold,
    ClusterDerived,
    ClusterEmbeddingThreshold,
    ClusterForce,
    ClusterGrouping,
    ClusterK,
    ClusterPhashThreshold,
    ClusterRepresentative,
    ClusterSearch,
    ClusterSignals,
    ClusterVerify,
    DownloadAllowFileUrls,
    DownloadCaptionCol,
    DownloadDistributor,
    DownloadEncodeFormat,
    DownloadImageSize,
    DownloadIncremental,
    DownloadInputFormat,
    DownloadMaxImageArea,
    DownloadMinImageSize,
    DownloadProcesses,
    DownloadResizeMode,
    DownloadResizeOnlyIfBigger,
    DownloadRespectRobots,
    DownloadRetries,
    DownloadSamplesPerShard,
    DownloadSaveAdditionalColumns,
    DownloadSkipReencode,
    DownloadThreads,
    DownloadTimeout,
    DownloadUrlCol,
    DownloadUrlList,
    EmbedBatchSize,
    EmbedDevice,
    EmbedEmbedder,
    EmbedEmbedMissing,
    EmbedFromPrecomputed,
    EmbedModel,
    EmbedPrecision,
    EmbedPretrained,
    EmbedWorkers,
    ImportCaptionCol,
    ImportRekey,
    ImportSamplesPerShard,
    ImportSource,
    WriteDryRun,
    WriteSamplesPerShard,
    WriteWorkers,
)
from dedup.core.config import ClusterConfig, DownloadConfig
from dedup.core.errors import UserError
from dedup.options import (
    ConfigOpt,
    ExecutorOpt,
    Group,
    RayAddressOpt,
    WorkdirArg,
    load_pipeline_config,
    open_executor,
    with_executor,
)
from dedup.stages import Options, run_stage

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help=(
        "Find and remove near-duplicates in image-text datasets, and measure how much that lowers a "
        "diffusion model's memorization of its training data.\n\n"
        "Stages, each resumable, all sharing one WORKDIR: download -> embed -> cluster -> write "
        "(-> attack, report). [bold]dedup run CONFIG[/bold] runs them all; [bold]dedup demo[/bold] runs "
        "them offline on a bundled corpus."
    ),
)


@app.command(rich_help_panel="Stages")
def download(
    url_list: DownloadUrlList,
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    input_format: DownloadInputFormat = None,
    url_col: DownloadUrlCol = None,
    caption_col: DownloadCaptionCol = None,
    save_additional_columns: DownloadSaveAdditionalColumns = None,
    image_size: DownloadImageSize = None,
    resize_mode: DownloadResizeMode = None,
    resize_only_if_bigger: DownloadResizeOnlyIfBigger = None,
    encode_format: DownloadEncodeFormat = None,
    skip_reencode: DownloadSkipReencode = None,
    processes: DownloadProcesses = None,
    threads: DownloadThreads = None,
    samples_per_shard: DownloadSamplesPerShard = None,
    timeout: DownloadTimeout = None,
    retries: DownloadRetries = None,
    max_image_area: DownloadMaxImageArea = None,
    min_image_size: DownloadMinImageSize = None,
    respect_robots: DownloadRespectRobots = None,
    allow_file_urls: DownloadAllowFileUrls = None,
    incremental: DownloadIncremental = None,
    distributor: DownloadDistributor = None,
) -> None:
    """Download a URL list into WebDataset shards (img2dataset); print what succeeded and why rows failed.

    Shards land in WORKDIR/download/ in img2dataset's layout (NNNNN.tar, NNNNN.parquet,
    NNNNN_stats.json); the summary goes to WORKDIR/download_summary.json.
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir

    given = {k: v for k, v in locals().items() if k in DownloadConfig.model_fields}  # options = fields
    extra = {"url_list": str(url_list), "save_additional_columns": save_additional_columns or None}
    cfg = override(load_pipeline_config(config).download, **{**given, **extra})
    pipeline = load_pipeline_config(config)
    with open_executor(pipeline, None, None) as ex:
        run_stage(
            "download",
            pipeline.model_copy(update={"download": cfg, "source": None}),
            WorkDir(workdir),
            ex,
            Options(),
        )


@app.command("import", rich_help_panel="Stages")
def import_cmd(
    source: ImportSource,
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    caption_col: ImportCaptionCol = None,
    samples_per_shard: ImportSamplesPerShard = None,
    rekey: ImportRekey = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Dedup the data you already have: import it as WORKDIR's download stage, without downloading.

    Local shards are referenced, not copied (a changed original is refused later, never reused).
    A folder's or parquet's images keep their original bytes (never re-encoded); a folder's key is the
    relative path. Unreadable files (and files that are not images) get a ledger row (download_failed),
    never a silent drop. A killed import resumes when rerun; a source that changed since it was
    imported is refused. A unit per source tar, parquet file or slice of a folder, on the executor
    (`--executor ray`: every worker must reach the source). The same stage as `dedup run` with
    `source:` in a config. Then run embed, cluster, write.
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir

    pipeline = load_pipeline_config(config)
    update = {
        "source": source,
        "source_options": override(pipeline.source_options, caption_col=caption_col, rekey=rekey),
        "download": override(pipeline.download, samples_per_shard=samples_per_shard),
    }
    with open_executor(pipeline, executor, ray_address) as ex:
        run_stage("download", pipeline.model_copy(update=update), WorkDir(workdir), ex, Options())


@app.command(rich_help_panel="Stages")
def embed(
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    embedder: EmbedEmbedder = None,
    model: EmbedModel = None,
    pretrained: EmbedPretrained = None,
    batch_size: EmbedBatchSize = None,
    workers: EmbedWorkers = None,
    device: EmbedDevice = None,
    precision: EmbedPrecision = None,
    from_precomputed: EmbedFromPrecomputed = None,
    embed_missing: EmbedEmbedMissing = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Embed every downloaded image and hash it (sha256 of the bytes, 64-bit perceptual hash), per shard.

    Writes WORKDIR/embed/img_emb/img_emb_NNNNN.npy (float16, L2-normalised) and
    WORKDIR/embed/metadata/metadata_NNNNN.parquet, clip-retrieval's layout. Resumable: finished
    shards are skipped. Images that fail to decode keep a row with a status saying why.
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir

    pipeline = load_pipeline_config(config)
    cfg = override(
        pipeline.embed,
        embedder=embedder,
        model=model,
        pretrained=pretrained,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        from_precomputed=str(from_precomputed) if from_precomputed else None,
        embed_missing=embed_missing,
    )
    with open_executor(pipeline, executor, ray_address) as ex:
        run_stage(
            "embed", pipeline.model_copy(update={"embed": cfg}), WorkDir(workdir), ex, Options(progress)
        )


@app.command(rich_help_panel="Stages")
def cluster(
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    signals: ClusterSignals = None,
    embedding_threshold: ClusterEmbeddingThreshold = None,
    candidate_threshold: ClusterCandidateThreshold = None,
    phash_threshold: ClusterPhashThreshold = None,
    verify: ClusterVerify = None,
    derived: ClusterDerived = None,
    k: ClusterK = None,
    search: ClusterSearch = None,
    grouping: ClusterGrouping = None,
    representative: ClusterRepresentative = None,
    against: ClusterAgainst = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    force: ClusterForce = False,
) -> None:
    """Find near-duplicate groups and choose one image to keep per group.

    Writes WORKDIR/cluster/pairs.parquet (key_a, key_b, proposed_by, signal, similarity, and the
    verifier's evidence: orb_inliers, inlier_ratio, coverage, pixel_match, color_match, verdict) and
    WORKDIR/cluster/clusters.parquet (key, cluster_id, cluster_size, is_representative,
    representative_key, similarity_to_representative).
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir

    pipeline = load_pipeline_config(config)
    given = {k: v for k, v in locals().items() if k in ClusterConfig.model_fields}  # options = fields
    extra = {"signals": signals.split(",") if signals else None, "against": str(against) if against else None}
    cfg = override(pipeline.cluster, **{**given, **extra})
    with open_executor(pipeline, executor, ray_address) as ex:
        run_stage(
            "cluster",
            pipeline.model_copy(update={"cluster": cfg}),
            WorkDir(workdir),
            ex,
            Options(progress, force),
        )


@app.command(rich_help_panel="Stages")
def write(
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    samples_per_shard: WriteSamplesPerShard = None,
    workers: WriteWorkers = None,
    dry_run: WriteDryRun = False,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write the deduplicated WebDataset and the ledger.

    Kept samples are copied byte for byte (every member: image, txt, json, ...) into
    WORKDIR/dedup/NNNNN.tar with img2dataset's per-shard parquet and _stats.json.
    WORKDIR/ledger.parquet has one row per input sample: kept, or why not (duplicate of KEY with
    cluster, signal and similarity; download failure; decode failure).
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir
    from dedup.write.stage import format_write_summary, run_write

    pipeline = load_pipeline_config(config)
    cfg = override(pipeline.write, samples_per_shard=samples_per_shard, workers=workers)
    with open_executor(pipeline, executor, ray_address) as ex:
        if dry_run:  # a preview, not a stage run: nothing is written
            typer.echo(format_write_summary(run_write(cfg, WorkDir(workdir), dry_run=True, executor=ex)))
            return
        run_stage(
            "write", pipeline.model_copy(update={"write": cfg}), WorkDir(workdir), ex, Options(progress)
        )


@app.command(rich_help_panel="Stages")
def report(workdir: WorkdirArg, config: ConfigOpt = None) -> None:
    """Write the HTML report, summary.json and plots for WORKDIR.

    WORKDIR/report/index.html opens from disk (no server, no network): download outcome, duplicate-group
    sizes, threshold sweep, galleries of the largest groups and borderline pairs, memorization before
    and after dedup, and the settings behind them. It shows what exists and says what did not run.
    """
    from dedup.core.layout import WorkDir

    pipeline = load_pipeline_config(config)
    with open_executor(pipeline, None, None) as ex:
        run_stage("report", pipeline, WorkDir(workdir), ex, Options())


@app.command(rich_help_panel="Pipelines")
def demo(
    workdir: Annotated[Path, typer.Argument(help="Where the demo corpus and all outputs go.")] = Path(
        "demo-work"
    ),
    config: ConfigOpt = None,
    stages: Annotated[
        str | None, typer.Option(help="Comma-separated stages to run (default: the config's list).")
    ] = None,
) -> None:
    """Run the whole pipeline offline on a bundled corpus with planted near-duplicates.

    Builds a LAION-style URL list from photographs that installed packages ship, copies some of them
    the way the web does (re-encoded, resized, cropped, mirrored, caption reworded; 1 to 150 copies),
    serves them on 127.0.0.1 and runs every stage on it. The planted truth is in WORKDIR/demo/.
    """
    from dedup.pipeline import run_demo

    run_demo(workdir, load_pipeline_config(config) if config else None, stages.split(",") if stages else None)


@app.command("stage", rich_help_panel="Pipelines")
def stage_cmd(
    name: Annotated[
        str, typer.Argument(help="A stage of the registry: dedup run's stages, added ones included.")
    ],
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run one stage of the registry (dedup/stages.py) on WORKDIR with a config's settings, exactly as
    `dedup run --stages NAME` would: the way to run a stage another package adds."""
    from dedup.core.layout import WorkDir
    from dedup.stages import check_stages

    check_stages([name])
    pipeline = load_pipeline_config(config)
    with open_executor(pipeline, executor, ray_address) as ex:
        run_stage(name, pipeline, WorkDir(workdir), ex, Options())


@app.command(rich_help_panel="Pipelines")
def run(
    config: Annotated[Path, typer.Argument(help="YAML pipeline config (see configs/).")],
    workdir: Annotated[Path | None, typer.Option(help="Override the config's workdir.")] = None,
    stages: Annotated[
        str | None, typer.Option(help="Comma-separated stages to run (default: the config's list).")
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run every stage of a YAML pipeline in order, skipping work already complete."""
    from dedup.core.config import load_config
    from dedup.pipeline import run_pipeline

    cfg = with_executor(load_config(config), executor, ray_address)  # as every stage command does
    if workdir is not None:
        cfg.workdir = str(workdir)
    run_pipeline(cfg, stages.split(",") if stages else None)


def _register_commands() -> None:
    import dedup.inspect_commands  # noqa: F401  (its commands register on app)

    """Sub-apps other packages add (dedup.core.extensions, ``dedup.commands``): ``dedup attack ...``."""
    from dedup.core.extensions import COMMANDS, extensions

    for name, sub_app in extensions(COMMANDS).items():
        app.add_typer(sub_app, name=name, rich_help_panel="Stages")


_register_commands()


def main() -> None:
    try:
        app()
    except UserError as err:  # raised outside a command (e.g. while parsing a config)
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
