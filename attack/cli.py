"""``dedup attack ...``: train, sample, extract, compare (attack.md §4) and generate-and-filter (§3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from attack.config import ARMS
from dedup.core.errors import UserError
from dedup.options import ConfigOpt, Group, load_pipeline_config

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    help=(
        "Measure memorization with the extraction attacks of Carlini et al. 2023.\n\n"
        "Definitions in shared/docs/attack.md: train a reference DDPM before and after dedup and count "
        "extracted training images (compare), or run generate-and-filter on any generator."
    ),
    short_help="Measure memorization: before/after DDPM extraction, generate-and-filter.",
)

Budget = Annotated[
    str | None,
    typer.Option(help="demo (~15 min on 2 CPU cores) | gpu (32 px, larger model, longer). [default: demo]"),
]
Steps = Annotated[int | None, typer.Option(help="Optimizer steps. [default: from the budget]")]
Batch = Annotated[int | None, typer.Option(help="Batch size. [default: from the budget]")]
Resolution = Annotated[int | None, typer.Option(help="Image side in pixels. [default: from the budget]")]
Seed = Annotated[int | None, typer.Option(help="Seed for initialisation, batches and sampling. [default: 0]")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda. [default: auto]")]


def _attack_cfg(config: Path | None, **options: Any) -> Any:
    from dedup.core.config import override

    return override(load_pipeline_config(config).attack, **options)


@app.command("train")
def train_cmd(
    data: Annotated[
        Path,
        typer.Argument(help="Training shards: a folder of NNNNN.tar, or a work directory (its download/)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (resumes if it exists).")],
    config: ConfigOpt = None,
    budget: Budget = None,
    steps: Steps = None,
    batch_size: Batch = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (warm-up, then cosine decay).")] = None,
    resolution: Resolution = None,
    channels: Annotated[int | None, typer.Option(help="UNet base channels.")] = None,
    conditional: Annotated[
        bool | None, typer.Option(help="Condition on captions (classifier-free guidance).")
    ] = None,
    seed: Seed = None,
    device: Device = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with the loss.")] = True,
) -> None:
    """Train the reference DDPM on a set of shards. Checkpoints load with torch.load(weights_only=True)."""
    from attack.compare import train_config
    from attack.config import resolve_attack
    from attack.data import read_images, shard_folder
    from attack.train import train

    cfg = resolve_attack(
        _attack_cfg(
            config,
            budget=budget,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            resolution=resolution,
            channels=channels,
            conditional=conditional,
            seed=seed,
            device=device,
        )
    )
    images = read_images(shard_folder(data, "before"), cfg.resolution)
    s = train(images.images, images.captions, train_config(cfg), out, progress=progress)
    typer.echo(
        f"trained {s['parameters'] / 1e6:.2f}M parameters on {s['images']} images for {s['steps']} steps "
        f"in {s['seconds']:.0f} s; final loss {s['final_loss']}; checkpoint {out}"
    )


@app.command("sample")
def sample_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint from `dedup attack train`.")],
    n: Annotated[int, typer.Option("-n", help="Number of images.")],
    out: Annotated[Path, typer.Option("--out", help="Generations file to write (.npz).")],
    prompts_from: Annotated[
        Path | None,
        typer.Option(
            help="Use the captions of these shards (folder or work directory) as prompts, in order, cycled."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Generate images with DDIM (deterministic for a seed)."""
    from attack.data import read_images, shard_folder
    from attack.sample import sample_to_file
    from attack.train import load_checkpoint

    if n < 1:
        raise UserError(f"-n {n}: the number of images is at least 1")
    if not model.exists():
        raise UserError(f"{model}: no such checkpoint")
    load_checkpoint(model)  # refuse a file that is not one before anything is written
    captions = None
    if prompts_from is not None:
        res = load_checkpoint(model)["config"]["unet"]["resolution"]
        captions = read_images(shard_folder(prompts_from, "before"), res).captions
    sample_to_file(model, out, n, captions, steps, guidance, seed, device)
    typer.echo(f"wrote {n} generations to {out}")


@app.command("extract")
def extract_cmd(
    generations: Annotated[Path, typer.Argument(help="Generations (.npz from `dedup attack sample`).")],
    train: Annotated[
        Path, typer.Option("--train", help="The training work directory (its download/ and clusters).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the per-generation and per-image tables.")
    ] = None,
    clusters: Annotated[
        Path | None, typer.Option(help="clusters.parquet (default: the work directory's).")
    ] = None,
) -> None:
    """Count the training images a set of generations extracts.

    Per generation: nearest training image, l2, tiled l2, calibrated l2 (alpha 0.5, n 50) and the
    verdicts; per training image: its duplicate count k, its best generation, extracted or not.
    """
    from attack.data import reference_set
    from attack.extract import extract
    from attack.sample import load_generations
    from dedup.core.files import atomic_path

    images, prompts = load_generations(generations)
    reference, k, _ = reference_set(train, images.shape[1], clusters)
    ex = extract(images, prompts, reference.images, reference.keys, k)
    out = out or generations.parent
    for name, table in (("generations.parquet", ex.generations), ("training_images.parquet", ex.images)):
        with atomic_path(out / name) as tmp:
            table.write_parquet(tmp)
    counts = ex.counts()
    for crit, row in counts["by_criterion"].items():
        typer.echo(
            f"{crit:<18} extracted {row['total']:>5}  ("
            + ", ".join(f"k {b}: {row[b]}" for b in ("1", "2-4", "5-19", "20+"))
            + ")"
        )
    c = counts["continuous"]
    typer.echo(
        f"generations whose nearest training image is duplicated: {c['share_nearest_duplicated']:.1%}; "
        f"best calibrated score {c['min_calibrated']}; tables in {out}"
    )


@app.command("compare")
def compare_cmd(
    before: Annotated[
        Path, typer.Option(help="Data as downloaded: a work directory (its download/) or shards.")
    ],
    after: Annotated[Path, typer.Option(help="Data after dedup: a work directory (its dedup/) or shards.")],
    out: Annotated[Path | None, typer.Option(help="Output folder. [default: BEFORE/attack]")] = None,
    clusters: Annotated[
        Path | None, typer.Option(help="clusters.parquet of the before set (default: BEFORE's).")
    ] = None,
    config: ConfigOpt = None,
    budget: Budget = None,
    steps: Steps = None,
    batch_size: Batch = None,
    resolution: Resolution = None,
    samples: Annotated[int | None, typer.Option(help="Generations per model.")] = None,
    max_distinct: Annotated[
        int | None,
        typer.Option(help="Train on at most this many near-duplicate groups (all duplicated ones kept)."),
    ] = None,
    seed: Seed = None,
    device: Device = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the same DDPM before and after dedup and count the training images each one leaks.

    The protocol of attack.md §4: same architecture, resolution, steps, batch, seed, prompts and sample
    count; unique training images extracted, split by duplicate count. Writes OUT/summary.json,
    OUT/extracted_pairs.png, per-model tables and checkpoints.
    """
    from attack.compare import format_compare, run_compare
    from dedup.core.layout import WorkDir

    cfg = _attack_cfg(
        config,
        budget=budget,
        steps=steps,
        batch_size=batch_size,
        resolution=resolution,
        samples=samples,
        max_distinct=max_distinct,
        seed=seed,
        device=device,
    )
    out = out or WorkDir(before).attack_dir
    summary = run_compare(before, after, out, cfg, clusters, progress=progress)
    typer.echo(format_compare(summary))
    typer.echo(f"summary: {out / 'summary.json'}; pairs: {out / 'extracted_pairs.png'}")


@app.command("experiment")
def experiment_cmd(
    workdir: Annotated[Path, typer.Argument(help="A work directory after download, cluster and write.")],
    seeds: Annotated[int, typer.Option(help="Replicates: data and training seeds 0..N-1.")] = 5,
    arms: Annotated[
        str,
        typer.Option(help=f"Comma-separated, from: {', '.join(ARMS)}."),
    ] = ",".join(ARMS),
    holdout: Annotated[
        int, typer.Option(help="Singletons no arm trains on (membership inference's non-members).")
    ] = 200,
    out: Annotated[
        Path | None, typer.Option(help="Folder for every run. [default: WORKDIR/attack/experiment]")
    ] = None,
    config: ConfigOpt = None,
    budget: Budget = None,
    steps: Steps = None,
    samples: Annotated[int | None, typer.Option(help="Generations per model.")] = None,
    device: Device = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The memorization measurement as a controlled experiment, every arm over several replicates.

    Arms: before; after at equal steps (the paper's protocol); after at equal passes per image; a
    control that removes as many images at random; and an exposure-matched control that removes as
    many copies per duplicate bucket at random. Each arm reports its exposure per bucket and its
    quality (held-out loss against steps, pixel KID). The analysis attack.md §6 declares: the primary
    endpoint (best calibrated l2 of images with 5+ copies, after vs before, exact one-sided sign-flip
    test, its power for the paper's effect); every other comparison exploratory, Holm-corrected; each
    criterion's false-positive rate on held-out images; dose-response against copies. Every
    finished run is kept: rerun the same command to resume.
    """
    from attack.experiment import format_experiment, run_experiment
    from attack.layout import ExperimentDir
    from dedup.core.layout import WorkDir

    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())
    bad = [a for a in chosen if a not in ARMS]
    if bad or "before" not in chosen:
        raise UserError(f"--arms {arms}: give 'before' and any of {', '.join(ARMS)}")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: at least 1 (5 or more for intervals worth reading)")
    if holdout < 1:
        raise UserError(f"--holdout {holdout}: membership inference needs at least 1 held-out image")
    cfg = _attack_cfg(config, budget=budget, steps=steps, samples=samples, device=device)
    out = out or WorkDir(workdir).attack_dir / "experiment"
    summary = run_experiment(
        workdir, workdir, out, cfg, list(range(seeds)), chosen, holdout=holdout, progress=progress
    )
    typer.echo(format_experiment(summary))
    if seeds == 1:
        typer.echo("one replicate: an illustration, not a measurement (no intervals); use --seeds 5 or more")
    typer.echo(f"summary: {ExperimentDir(out).summary}; tables: {ExperimentDir(out).table}")


@app.command("candidates")
def candidates_cmd(
    workdir: Annotated[Path, typer.Argument(help="A clustered work directory.")],
    top: Annotated[int, typer.Option(help="How many of the most-duplicated groups.")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="Parquet to write. [default: WORKDIR/attack/candidates.parquet]")
    ] = None,
) -> None:
    """List the captions of the most-duplicated groups, the prompts to attack first.

    Duplicate count, kept sample and caption variants per group, as the paper took the most duplicated
    LAION images.
    """
    from attack.generate_filter import candidates
    from attack.layout import AttackDir
    from dedup.core.files import atomic_path
    from dedup.core.layout import WorkDir

    if top < 1:
        raise UserError(f"--top {top}: the number of groups is at least 1")
    work = WorkDir(workdir)
    table = candidates(work, top)
    out = out or AttackDir(work.attack_dir).candidates
    with atomic_path(out) as tmp:
        table.write_parquet(tmp)
    typer.echo(
        f"{table.height} candidate captions (duplicate counts {table['duplicate_count'].max()} .. "
        f"{table['duplicate_count'].min()}) -> {out}"
    )


@app.command("generate-filter")
def generate_filter_cmd(
    generator: Annotated[
        str,
        typer.Option(
            help="ddpm:CHECKPOINT | diffusers:NAME_OR_PATH | dir:FOLDER (one sub-folder per caption)."
        ),
    ],
    candidates: Annotated[Path, typer.Option(help="Parquet from `dedup attack candidates`.")],
    k: Annotated[int, typer.Option("-k", help="Generations per caption (paper: 500).")] = 50,
    tau: Annotated[float, typer.Option(help="Edge threshold on tiled l2 (setting).")] = 0.15,
    m: Annotated[
        int | None, typer.Option(help="Clique size that flags a caption. [default: max(3, ceil(10K/500))]")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Compare at this resolution. [default: the generator's, <= 128]")
    ] = None,
    min_detail: Annotated[
        float, typer.Option(help="Leave out generations flatter than this (0 keeps all).")
    ] = 0.01,
    train: Annotated[
        Path | None,
        typer.Option(help="Training work directory for verification. [default: the candidates' own]"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder. [default: beside the candidates file]")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps for ddpm/diffusers generators.")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Guidance scale for ddpm/diffusers generators.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed; each caption gets its own range.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Black-box generate-and-filter on any generator (attack.md §3).

    K images per caption; a caption is flagged when its generations collapse to one image (largest clique
    of the tiled-l2 graph >= m) and verified when the clique's medoid matches a training image. Resumable.
    """
    from attack.generate_filter import Settings, format_generate_filter, run_generate_filter
    from attack.generators import make_generator
    from attack.layout import AttackDir

    if k < 2:
        raise UserError("-k must be at least 2: a clique needs generations to compare")
    if tau < 0:
        raise UserError(f"--tau {tau}: a distance threshold is at least 0")
    if m is not None and m < 2:
        raise UserError(f"--m {m}: a clique that flags a caption has at least 2 generations")
    gen = make_generator(generator, steps, guidance, device)
    out = out or AttackDir(candidates.parent).generate_filter.root  # beside the candidates
    summary = run_generate_filter(
        candidates,
        gen,
        Settings(k=k, tau=tau, m=m, size=size, min_detail=min_detail, seed=seed),
        out,
        train,
        progress,
    )
    typer.echo(format_generate_filter(summary))
    typer.echo(
        f"per caption: {out / 'results.parquet'}; medoids and nearest training images: {out / 'captions'}"
    )


def pipeline_stage(cfg: Any, work: Any, executor: Any = None) -> None:
    """The attack stage of ``dedup run`` / ``make demo`` (dedup.core.extensions, ``dedup.pipeline_stages``):
    one before/after comparison on the work directory, said to be an illustration."""
    from attack.compare import format_compare, run_compare

    typer.echo(format_compare(run_compare(work.root, work.root, work.attack_dir, cfg.attack)))
    typer.echo(
        "   one seed, one before/after pair: an illustration, not a measurement. The controlled "
        "experiment (arms, replicates, intervals, membership inference) is `dedup attack experiment "
        "WORKDIR --seeds 5`; its numbers on the demo corpus are in bench/RESULTS.md "
        "(python -m bench.attack)."
    )
