"""Typed configuration: one model per stage, filled from YAML in ``configs/`` and overridden by CLI options.

Unknown keys are errors (a typo must not silently fall back to a default), and every error names the
file and the key in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dedup.errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DownloadConfig(Section):
    """img2dataset settings. Defaults suit LAION metadata (``URL``/``TEXT`` columns)."""

    url_list: str | None = Field(None, description="URL list file or folder of such files")
    input_format: str | None = Field(
        None, description="parquet, csv, tsv, jsonl, json or txt (optionally .gz); inferred from the suffix"
    )
    url_col: str = "URL"
    caption_col: str | None = "TEXT"
    save_additional_columns: list[str] = Field(default_factory=list)
    image_size: int = Field(512, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    skip_reencode: bool = True
    processes: int = Field(1, gt=0)
    threads: int = Field(64, gt=0)
    samples_per_shard: int = Field(10_000, gt=0)
    timeout: int = Field(10, gt=0)
    retries: int = Field(0, ge=0)
    # Pillow's own decompression-bomb limit; checked from the header, before any pixel is decoded.
    max_image_area: int = Field(89_478_485, gt=0)
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(float("inf"), gt=0)
    respect_robots: bool = Field(True, description="skip images whose X-Robots-Tag opts out of AI use")
    incremental: bool = Field(True, description="skip shards already downloaded into the work directory")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    user_agent_token: str | None = "dedup"


class EmbedConfig(Section):
    """Which embedder, on which device. ``descriptor`` needs no weights and works offline."""

    embedder: Literal["clip", "descriptor"] = "clip"
    model: str = "ViT-B-32"
    # An open_clip pretrained tag (fetched through the hub cache) or a local checkpoint file.
    pretrained: str = "laion2b_s34b_b79k"
    batch_size: int = Field(64, gt=0)
    workers: int = Field(2, ge=0, description="decode workers; decoding overlaps the model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    descriptor_size: int = Field(16, ge=4, le=64, description="side of the weight-free pixel descriptor")
    local_features: bool = Field(
        True, description="also keep ORB descriptors per image, so crops become candidates in cluster"
    )
    from_precomputed: str | None = None


class ClusterConfig(Section):
    """Near-duplicate signals, search, grouping and the representative policy."""

    signals: list[Literal["exact", "phash", "embedding"]] = Field(
        default_factory=lambda: ["exact", "phash", "embedding"]
    )
    # Defaults and the measurements behind them: see dedup/cluster.py and bench/RESULTS.md.
    embedding_threshold: float | None = Field(
        None, ge=0, le=1, description="cosine; None: the embedder's default"
    )
    candidate_threshold: float | None = Field(
        None, ge=0, le=1, description="lowest cosine worth a verifier's look; None: the embedder's default"
    )
    phash_threshold: int = Field(10, ge=0, le=64)
    verify: Literal["none", "orb"] = "orb"
    confirm: bool = Field(
        True,
        description="with verify: orb, every pair pHash or the embedding proposes must also be verified "
        "as a copy (aligned pixels agree); off: global signals alone accept",
    )
    derived: Literal["keep", "remove"] = Field(
        "keep",
        description="images derived from another (recoloured, an element added or removed, a large "
        "overlay): keep them as distinct (default), or remove them as duplicates",
    )
    orb_min_inliers: int = Field(5, ge=4, description="ORB inliers for a keypoint alignment to be tried")
    verify_workers: int = Field(
        0, ge=0, description="threads verifying pairs; 0: one per CPU core (results do not depend on it)"
    )
    local_candidates: bool = Field(
        True,
        description="propose pairs that share many ORB descriptors (crops) for verification; needs "
        "embed.local_features",
    )
    k: int = Field(32, gt=0, description="neighbours searched per sample")
    search: Literal["auto", "exact", "ivf"] = "auto"
    exact_max: int = Field(50_000, gt=0, description="auto switches to IVF above this many samples")
    nlist: int | None = Field(None, description="IVF partitions; None: about 2*sqrt(N)")
    nprobe: int = Field(8, gt=0, description="IVF partitions each sample is compared against")
    block_size: int = Field(16_384, gt=0)
    grouping: Literal["components", "representative", "semdedup"] = "representative"
    representative: Literal["resolution", "first", "centroid", "farthest", "caption"] = "resolution"
    against: str | None = Field(None, description="a reference work directory to dedup against")
    ground_truth: str | None = None


class WriteConfig(Section):
    samples_per_shard: int = Field(10_000, gt=0)
    workers: int = Field(4, ge=1, description="shards written at once (copies overlap other shards' fsync)")


class AttackConfig(Section):
    """Before/after training of a reference DDPM and the extraction test (../shared/docs/attack.md).

    ``budget`` picks a preset (``demo``: ~15 minutes on 2 CPU cores; ``gpu``: larger images, model and
    run); any field set explicitly in the YAML or on the command line overrides the preset.
    """

    budget: Literal["demo", "gpu"] = "demo"
    resolution: int = Field(16, ge=8)
    channels: int = Field(24, gt=0)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2])
    attention: bool = True
    steps: int = Field(1200, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup: int = Field(100, ge=0)
    ema: float = Field(0.999, gt=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    seed: int = 0
    conditional: bool = True
    caption_dropout: float = Field(0.1, ge=0, le=1)
    guidance: float = Field(3.0, ge=0)
    samples: int = Field(1700, gt=0)
    duplicated_prompt_repeats: int = Field(
        8, ge=1, description="prompts per caption of a duplicated group (singletons get one); attack.md §3.1"
    )
    sample_steps: int = Field(15, gt=0)
    max_distinct: int | None = Field(
        None, gt=1, description="train on at most this many near-duplicate groups (all duplicated ones kept)"
    )
    calibrated_threshold: float = Field(1 / 3, gt=0, description="attack.md §1 (setting): default 1/3")
    device: Literal["auto", "cpu", "cuda"] = "auto"


ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "demo": {
        # Measured on the 2-core machine (bench/RESULTS.md, "Attack"): a 1.4M-parameter UNet at
        # ~0.31 s per step and ~45 ms per 15-step DDIM sample, so two models of 1200 steps and 1,700
        # generations each (600 reference captions: 446 singletons once, 154 duplicated ones 8 times)
        # take about 15 minutes together.
        "resolution": 16,
        "channels": 24,
        "channel_mults": [1, 2, 2],
        "steps": 1200,
        "batch_size": 64,
        "lr": 2e-3,
        "samples": 1700,
        "sample_steps": 15,
        "max_distinct": 600,
    },
    "gpu": {
        "resolution": 32,
        "channels": 64,
        "channel_mults": [1, 2, 2, 2],
        "steps": 30000,
        "batch_size": 128,
        "lr": 2e-4,
        "samples": 10000,
        "sample_steps": 50,
        "max_distinct": None,
    },
}


def resolve_attack(cfg: AttackConfig) -> AttackConfig:
    """The budget preset, with every field the user set explicitly on top."""
    explicit = {k: getattr(cfg, k) for k in cfg.model_fields_set if k != "budget"}
    out = AttackConfig.model_validate({"budget": cfg.budget, **ATTACK_BUDGETS[cfg.budget], **explicit})
    halvings = len(out.channel_mults) - 1
    if out.resolution % (2**halvings):
        raise UserError(
            f"attack resolution {out.resolution}: must be a multiple of {2**halvings} "
            f"(the UNet halves it {halvings} times; channel_mults {out.channel_mults})"
        )
    return out


class ReportConfig(Section):
    gallery_groups: int = Field(12, ge=0)
    borderline_pairs: int = Field(12, ge=0)


class DemoConfig(Section):
    seed: int = 0
    distinct: int = Field(2000, gt=0, description="distinct base images (tiles of bundled photos)")
    tile: int = Field(160, ge=32)


class RayConfig(Section):
    """Where ``executor: ray`` runs (README, "On a cluster")."""

    address: str | None = Field(
        None,
        description="a running Ray cluster to join ('auto', 'ray://head:10001'); none starts a local "
        "cluster for this run and stops it at the end",
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs of that local cluster [default: all]")


class PipelineConfig(Section):
    workdir: str = "work"
    executor: Literal["local", "ray"] = Field(
        "local",
        description="where embed, cluster and write run their units: this process, or Ray tasks "
        "(download then uses img2dataset's ray distributor); the files are the same",
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    source: str | None = Field(
        None,
        description="data you already have (WebDataset shards read in place, a folder of images, or "
        "parquet with image bytes; a path or fsspec URL): the download stage imports it instead of "
        "downloading a URL list",
    )
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    write: WriteConfig = Field(default_factory=WriteConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    demo: DemoConfig | None = None
    stages: list[Literal["download", "embed", "cluster", "write", "attack", "report"]] = Field(
        default_factory=lambda: ["download", "embed", "cluster", "write", "report"]
    )

    @field_validator("workdir")
    @classmethod
    def _workdir_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


S = TypeVar("S", bound=Section)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"key '{loc}': {e['msg']}{more}"


def load_config(path: str | Path) -> PipelineConfig:
    """Read a YAML pipeline; any problem is a one-line :class:`UserError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of stage sections at the top level")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{path}: {_first_error(err)}") from None


def override(section: S, **options: Any) -> S:
    """Apply CLI options that were given (not None) on top of a config section, validated."""
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return section
    try:
        # only explicitly set fields carry over, so "unset" stays distinguishable (attack budgets)
        return type(section).model_validate({**section.model_dump(exclude_unset=True), **given})
    except ValidationError as err:
        raise UserError(f"option {_first_error(err)}") from None


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
