"""The ``dedup`` command line: one sub-command per stage, all thin wrappers over the Python API.

Every stage reads and writes a work directory (layout in ``dedup/core/layout.py``); options override the
YAML config given with ``--config`` (or the defaults). Bad input prints one line and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dedup.core.config import ClusterConfig, DownloadConfig, EmbedConfig, WriteConfig
from dedup.core.errors import UserError
from dedup.options import (
    ConfigOpt,
    ExecutorOpt,
    Group,
    RayAddressOpt,
    WorkdirArg,
    load_pipeline_config,
    open_executor,
    option,
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
    url_list: Annotated[
        Path, typer.Argument(help="URL list: parquet, csv, tsv, jsonl, json or txt (or a folder).")
    ],
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    input_format: Annotated[
        str | None, typer.Option(help="Format of URL_LIST; inferred from its suffix.")
    ] = None,
    url_col: Annotated[str | None, typer.Option(help="URL column. \\[default: URL, as in LAION]")] = None,
    caption_col: Annotated[str | None, option(DownloadConfig, "caption_col", "Caption column.")] = None,
    save_additional_columns: Annotated[
        list[str] | None, typer.Option(help="Extra input columns to keep in each sample's json (repeatable).")
    ] = None,
    image_size: Annotated[int | None, option(DownloadConfig, "image_size", "Target size in pixels.")] = None,
    resize_mode: Annotated[
        str | None,
        option(DownloadConfig, "resize_mode", "no | border | keep_ratio | keep_ratio_largest | center_crop."),
    ] = None,
    resize_only_if_bigger: Annotated[
        bool | None,
        option(DownloadConfig, "resize_only_if_bigger", "Never upscale."),
    ] = None,
    encode_format: Annotated[
        str | None,
        option(DownloadConfig, "encode_format", "jpg | png | webp, for re-encoded images."),
    ] = None,
    skip_reencode: Annotated[
        bool | None,
        option(DownloadConfig, "skip_reencode", "Keep the original bytes when no resize is needed."),
    ] = None,
    processes: Annotated[int | None, option(DownloadConfig, "processes", "Download processes.")] = None,
    threads: Annotated[int | None, option(DownloadConfig, "threads", "Threads per process.")] = None,
    samples_per_shard: Annotated[
        int | None,
        option(DownloadConfig, "samples_per_shard", "Samples per output shard."),
    ] = None,
    timeout: Annotated[int | None, option(DownloadConfig, "timeout", "Seconds per request.")] = None,
    retries: Annotated[int | None, option(DownloadConfig, "retries", "Retries per URL.")] = None,
    max_image_area: Annotated[
        int | None,
        option(
            DownloadConfig,
            "max_image_area",
            "Refuse images with more pixels than this, from the header (decompression bombs).",
        ),
    ] = None,
    min_image_size: Annotated[
        int | None,
        option(DownloadConfig, "min_image_size", "Refuse images smaller than this."),
    ] = None,
    respect_robots: Annotated[
        bool | None,
        typer.Option(
            "--respect-robots/--ignore-robots",
            help="Skip images whose X-Robots-Tag says noai, noimageai, noindex or noimageindex. "
            "\\[default: respect]",
        ),
    ] = None,
    allow_file_urls: Annotated[
        bool | None,
        option(
            DownloadConfig,
            "allow_file_urls",
            "Download file:// and other non-http(s) URLs too (refused by default: a URL list could "
            "pull this machine's files into the dataset).",
        ),
    ] = None,
    incremental: Annotated[
        bool | None,
        option(
            DownloadConfig,
            "incremental",
            "Resume: skip shards already in WORKDIR; --no-incremental redoes everything.",
        ),
    ] = None,
    distributor: Annotated[
        str | None,
        option(DownloadConfig, "distributor", "multiprocessing | pyspark | ray."),
    ] = None,
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
    source: Annotated[
        str,
        typer.Argument(
            help="WebDataset shards (a .tar, a folder of them, a glob or 'dir/{00000..00099}.tar'; read "
            "in place), a folder of images (recursively; captions from sidecar .txt/.json) or parquet "
            "file(s) with image bytes (Hugging Face layout: an 'image' struct with bytes/path). A path "
            "or an fsspec URL (file://, s3://, gs://, hf:// with that package installed)."
        ),
    ],
    workdir: WorkdirArg,
    caption_col: Annotated[
        str | None, typer.Option(help="Parquet caption column. \\[default: text, caption or TEXT]")
    ] = None,
    samples_per_shard: Annotated[int, typer.Option(help="Samples per WebDataset shard.")] = 10_000,
    rekey: Annotated[
        bool,
        typer.Option(
            help="Shards whose keys repeat across tars (each numbered from 000000): copy them into the "
            "work dir keyed <tar name>/<key>, every member's bytes unchanged, instead of reading them in "
            "place. Without it such shards are refused."
        ),
    ] = False,
) -> None:
    """Dedup the data you already have: import it as WORKDIR's download stage, without downloading.

    Local shards are referenced, not copied (a changed original is refused later, never reused).
    A folder's or parquet's images keep their original bytes (never re-encoded); a folder's key is the
    relative path. Unreadable files (and files that are not images) get a ledger row (download_failed),
    never a silent drop. A killed import resumes when rerun; a source that changed since it was
    imported is refused. Then run embed, cluster, write.
    """
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import format_import_summary, run_import

    if samples_per_shard < 1:
        raise UserError("--samples-per-shard must be at least 1")
    summary = run_import(source, WorkDir(workdir), samples_per_shard, caption_col, rekey)
    typer.echo(format_import_summary(summary))


@app.command(rich_help_panel="Stages")
def embed(
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    embedder: Annotated[
        str | None,
        option(EmbedConfig, "embedder", "clip (open_clip) | descriptor (weight-free, offline)."),
    ] = None,
    model: Annotated[str | None, option(EmbedConfig, "model", "open_clip model name.")] = None,
    pretrained: Annotated[
        str | None,
        option(
            EmbedConfig, "pretrained", "open_clip pretrained tag, or a local checkpoint file for offline use."
        ),
    ] = None,
    batch_size: Annotated[int | None, option(EmbedConfig, "batch_size", "Images per model batch.")] = None,
    workers: Annotated[
        int | None,
        option(EmbedConfig, "workers", "Decode threads running ahead of the model."),
    ] = None,
    device: Annotated[str | None, option(EmbedConfig, "device", "auto | cpu | cuda.")] = None,
    precision: Annotated[
        str | None,
        option(EmbedConfig, "precision", "auto (fp16/bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    ] = None,
    from_precomputed: Annotated[
        Path | None,
        typer.Option(
            help="Import released embeddings (img_emb/*.npy + metadata/*.parquet, clip-retrieval "
            "layout) joined by key or URL, instead of running a model."
        ),
    ] = None,
    embed_missing: Annotated[
        bool | None,
        typer.Option(
            "--embed-missing/--refuse-missing",
            help="With --from-precomputed: embed the images the released vectors lack with --model/"
            "--pretrained (the model that made them), or refuse such a source. \\[default: refuse]",
        ),
    ] = None,
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
    signals: Annotated[
        str | None, typer.Option(help="Comma-separated: exact,phash,embedding. \\[default: all three]")
    ] = None,
    embedding_threshold: Annotated[
        float | None,
        typer.Option(help="Cosine at or above which two images are duplicates. \\[default: per embedder]"),
    ] = None,
    candidate_threshold: Annotated[
        float | None,
        typer.Option(
            help="Lowest cosine for which a pair gets a local-feature check (--verify orb). "
            "\\[default: per embedder]"
        ),
    ] = None,
    phash_threshold: Annotated[
        int | None,
        option(
            ClusterConfig, "phash_threshold", "Perceptual-hash Hamming distance (of 64 bits) for duplicates."
        ),
    ] = None,
    verify: Annotated[
        str | None,
        option(
            ClusterConfig,
            "verify",
            "orb: align each proposed pair (ORB keypoints or a stretch) and compare the aligned "
            "pixels: only a copy agrees everywhere; none: trust pHash/cosine alone.",
        ),
    ] = None,
    derived: Annotated[
        str | None,
        option(
            ClusterConfig,
            "derived",
            "Images derived from another (recoloured, an element added or removed, a large "
            "overlay): keep (as distinct) | remove (as duplicates).",
        ),
    ] = None,
    k: Annotated[int | None, option(ClusterConfig, "k", "Neighbours searched per image.")] = None,
    search: Annotated[
        str | None,
        option(
            ClusterConfig, "search", "auto | exact (FAISS flat) | ivf (k-means partitions, exact inside)."
        ),
    ] = None,
    grouping: Annotated[
        str | None,
        option(
            ClusterConfig,
            "grouping",
            "components | representative (members must match the kept image directly) | semdedup.",
        ),
    ] = None,
    representative: Annotated[
        str | None,
        option(
            ClusterConfig,
            "representative",
            "Which image a group keeps: resolution | first | centroid | farthest | caption.",
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            help="Another work directory (embedded with the same embedder) to deduplicate against: "
            "samples that duplicate it are removed; it is not modified."
        ),
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if nothing changed.")] = False,
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
    samples_per_shard: Annotated[
        int | None,
        option(WriteConfig, "samples_per_shard", "Samples per output shard."),
    ] = None,
    workers: Annotated[
        int | None,
        option(WriteConfig, "workers", "Shards written at once; the output does not depend on it."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be removed (samples, bytes, by reason).")
    ] = False,
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
