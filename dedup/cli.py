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
    default_of,
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
    url_list: Annotated[
        Path, typer.Argument(help="URL list: parquet, csv, tsv, jsonl, json or txt (or a folder).")
    ],
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    input_format: Annotated[
        str | None, typer.Option(help="Format of URL_LIST; inferred from its suffix.")
    ] = None,
    url_col: Annotated[str | None, typer.Option(help="URL column. \\[default: URL, as in LAION]")] = None,
    caption_col: Annotated[
        str | None, typer.Option(help=f"Caption column. {default_of(DownloadConfig, 'caption_col')}")
    ] = None,
    save_additional_columns: Annotated[
        list[str] | None, typer.Option(help="Extra input columns to keep in each sample's json (repeatable).")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help=f"Target size in pixels. {default_of(DownloadConfig, 'image_size')}")
    ] = None,
    resize_mode: Annotated[
        str | None,
        typer.Option(
            help="no | border | keep_ratio | keep_ratio_largest | center_crop. "
            f"{default_of(DownloadConfig, 'resize_mode')}"
        ),
    ] = None,
    resize_only_if_bigger: Annotated[
        bool | None,
        typer.Option(help=f"Never upscale. {default_of(DownloadConfig, 'resize_only_if_bigger')}"),
    ] = None,
    encode_format: Annotated[
        str | None,
        typer.Option(
            help=f"jpg | png | webp, for re-encoded images. {default_of(DownloadConfig, 'encode_format')}"
        ),
    ] = None,
    skip_reencode: Annotated[
        bool | None,
        typer.Option(
            help="Keep the original bytes when no resize is needed. "
            f"{default_of(DownloadConfig, 'skip_reencode')}"
        ),
    ] = None,
    processes: Annotated[
        int | None, typer.Option(help=f"Download processes. {default_of(DownloadConfig, 'processes')}")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help=f"Threads per process. {default_of(DownloadConfig, 'threads')}")
    ] = None,
    samples_per_shard: Annotated[
        int | None,
        typer.Option(help=f"Samples per output shard. {default_of(DownloadConfig, 'samples_per_shard')}"),
    ] = None,
    timeout: Annotated[
        int | None, typer.Option(help=f"Seconds per request. {default_of(DownloadConfig, 'timeout')}")
    ] = None,
    retries: Annotated[
        int | None, typer.Option(help=f"Retries per URL. {default_of(DownloadConfig, 'retries')}")
    ] = None,
    max_image_area: Annotated[
        int | None,
        typer.Option(
            help="Refuse images with more pixels than this, from the header (decompression bombs). "
            f"{default_of(DownloadConfig, 'max_image_area')}"
        ),
    ] = None,
    min_image_size: Annotated[
        int | None,
        typer.Option(help=f"Refuse images smaller than this. {default_of(DownloadConfig, 'min_image_size')}"),
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
        typer.Option(
            help="Download file:// and other non-http(s) URLs too (refused by default: a URL list could "
            f"pull this machine's files into the dataset). {default_of(DownloadConfig, 'allow_file_urls')}"
        ),
    ] = None,
    incremental: Annotated[
        bool | None,
        typer.Option(
            help="Resume: skip shards already in WORKDIR; --no-incremental redoes everything. "
            f"{default_of(DownloadConfig, 'incremental')}"
        ),
    ] = None,
    distributor: Annotated[
        str | None,
        typer.Option(help=f"multiprocessing | pyspark | ray. {default_of(DownloadConfig, 'distributor')}"),
    ] = None,
) -> None:
    """Download a URL list into WebDataset shards (img2dataset); print what succeeded and why rows failed.

    Shards land in WORKDIR/download/ in img2dataset's layout (NNNNN.tar, NNNNN.parquet,
    NNNNN_stats.json); the summary goes to WORKDIR/download_summary.json.
    """
    from dedup.core.config import override
    from dedup.core.layout import WorkDir

    cfg = override(
        load_pipeline_config(config).download,
        url_list=str(url_list),
        input_format=input_format,
        url_col=url_col,
        caption_col=caption_col,
        save_additional_columns=save_additional_columns or None,
        image_size=image_size,
        resize_mode=resize_mode,
        resize_only_if_bigger=resize_only_if_bigger,
        encode_format=encode_format,
        skip_reencode=skip_reencode,
        processes=processes,
        threads=threads,
        samples_per_shard=samples_per_shard,
        timeout=timeout,
        retries=retries,
        max_image_area=max_image_area,
        min_image_size=min_image_size,
        respect_robots=respect_robots,
        allow_file_urls=allow_file_urls,
        incremental=incremental,
        distributor=distributor,
    )
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
        typer.Option(
            help="clip (open_clip) | descriptor (weight-free, offline). "
            f"{default_of(EmbedConfig, 'embedder')}"
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=f"open_clip model name. {default_of(EmbedConfig, 'model')}")
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="open_clip pretrained tag, or a local checkpoint file for offline use. "
            f"{default_of(EmbedConfig, 'pretrained')}"
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"Images per model batch. {default_of(EmbedConfig, 'batch_size')}")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help=f"Decode threads running ahead of the model. {default_of(EmbedConfig, 'workers')}"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=f"auto | cpu | cuda. {default_of(EmbedConfig, 'device')}")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (fp16/bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16. "
            f"{default_of(EmbedConfig, 'precision')}"
        ),
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
        typer.Option(
            help="Perceptual-hash Hamming distance (of 64 bits) for duplicates. "
            f"{default_of(ClusterConfig, 'phash_threshold')}"
        ),
    ] = None,
    verify: Annotated[
        str | None,
        typer.Option(
            help="orb: align each proposed pair (ORB keypoints or a stretch) and compare the aligned "
            "pixels: only a copy agrees everywhere; none: trust pHash/cosine alone. "
            f"{default_of(ClusterConfig, 'verify')}"
        ),
    ] = None,
    derived: Annotated[
        str | None,
        typer.Option(
            help="Images derived from another (recoloured, an element added or removed, a large "
            f"overlay): keep (as distinct) | remove (as duplicates). {default_of(ClusterConfig, 'derived')}"
        ),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help=f"Neighbours searched per image. {default_of(ClusterConfig, 'k')}")
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(
            help="auto | exact (FAISS flat) | ivf (k-means partitions, exact inside). "
            f"{default_of(ClusterConfig, 'search')}"
        ),
    ] = None,
    grouping: Annotated[
        str | None,
        typer.Option(
            help="components | representative (members must match the kept image directly) | "
            f"semdedup. {default_of(ClusterConfig, 'grouping')}"
        ),
    ] = None,
    representative: Annotated[
        str | None,
        typer.Option(
            help="Which image a group keeps: resolution | first | centroid | farthest | caption. "
            f"{default_of(ClusterConfig, 'representative')}"
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
    cfg = override(
        pipeline.cluster,
        signals=signals.split(",") if signals else None,
        embedding_threshold=embedding_threshold,
        candidate_threshold=candidate_threshold,
        phash_threshold=phash_threshold,
        verify=verify,
        derived=derived,
        k=k,
        search=search,
        grouping=grouping,
        representative=representative,
        against=str(against) if against else None,
    )
    with open_executor(pipeline, executor, ray_address) as ex:
        run_stage(
            "cluster",
            pipeline.model_copy(update={"cluster": cfg}),
            WorkDir(workdir),
            ex,
            Options(progress, force),
        )


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


@app.command(rich_help_panel="Stages")
def write(
    workdir: WorkdirArg,
    config: ConfigOpt = None,
    samples_per_shard: Annotated[
        int | None,
        typer.Option(help=f"Samples per output shard. {default_of(WriteConfig, 'samples_per_shard')}"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Shards written at once; the output does not depend on it. "
            f"{default_of(WriteConfig, 'workers')}"
        ),
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


def _register_commands() -> None:
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
