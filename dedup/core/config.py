"""Typed configuration: one model per stage, filled from YAML in ``configs/`` and overridden by CLI options.

Unknown keys are errors (a typo must not silently fall back to a default), and every error names the
file and the key in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from dedup.core.errors import UserError
from dedup.core.shards import MAX_IMAGE_AREA


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
    max_image_area: int = Field(MAX_IMAGE_AREA, gt=0)
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(float("inf"), gt=0)
    respect_robots: bool = Field(True, description="skip images whose X-Robots-Tag opts out of AI use")
    allow_file_urls: bool = Field(
        False,
        description="download file:// (and other non-http) URLs too; off, a URL list that names a local "
        "file is refused (a list could otherwise pull this machine's files into a dataset)",
    )
    incremental: bool = Field(True, description="skip shards already downloaded into the work directory")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    user_agent_token: str | None = "dedup"


class ImportConfig(Section):
    """How ``source:`` (or ``dedup import``) is read; shard size is download.samples_per_shard."""

    caption_col: str | None = Field(
        None, description="parquet caption column; none: text, caption or TEXT, whichever the file has"
    )
    rekey: bool = Field(
        False,
        description="shards whose keys repeat across tars: copy them keyed <tar name>/<key> (bytes "
        "unchanged) instead of reading them in place; without it they are refused",
    )


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
    embed_missing: bool = Field(
        False, description="with from_precomputed: embed images the released vectors lack (same model)"
    )


# Choices a module acts on, named once here; the module reads them back (typing.get_args).
DerivedPolicy = Literal["keep", "remove"]
RepresentativePolicy = Literal["resolution", "first", "centroid", "farthest", "caption"]


class ClusterConfig(Section):
    """Near-duplicate signals, search, grouping and the representative policy."""

    signals: list[Literal["exact", "phash", "embedding"]] = Field(
        default_factory=lambda: ["exact", "phash", "embedding"]
    )
    # Defaults and the measurements behind them: see dedup/cluster/stage.py and bench/RESULTS.md.
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
    derived: DerivedPolicy = Field(
        "keep",
        description="images derived from another (recoloured, an element added or removed, a large "
        "overlay): keep them as distinct (default), or remove them as duplicates",
    )
    orb_min_inliers: int = Field(5, ge=4, description="ORB inliers for a keypoint alignment to be tried")
    verify_workers: int = Field(
        0, ge=0, description="threads verifying pairs; 0: one per CPU core (results do not depend on it)"
    )
    verify_unit_pairs: int = Field(
        256,
        gt=0,
        description="candidate pairs per verify unit (what an executor schedules and a rerun resumes "
        "from); results do not depend on it",
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
    reduce_dim: int | None = Field(
        128,
        gt=0,
        description="IVF partitions and compares wider vectors in a PCA sketch of this many dimensions, "
        "with a bound that loses no pair above the threshold, then rescores every candidate exactly; "
        "None: all dimensions (slower)",
    )
    block_size: int = Field(16_384, gt=0)
    grouping: Literal["components", "representative", "semdedup"] = "representative"
    representative: RepresentativePolicy = "resolution"
    against: str | None = Field(None, description="a reference work directory to dedup against")
    ground_truth: str | None = None


class WriteConfig(Section):
    samples_per_shard: int = Field(10_000, gt=0)
    workers: int = Field(4, ge=1, description="shards written at once (copies overlap other shards' fsync)")


class ReportConfig(Section):
    gallery_groups: int = Field(12, ge=0)
    borderline_pairs: int = Field(12, ge=0)


class DemoConfig(Section):
    seed: int = 0
    kind: Literal["tiles", "photos"] = Field(
        "tiles",
        description="tiles: `distinct` square tiles cut from the bundled photographs (thousands of images, "
        "many texture-like at the attack's 16 px); photos: each bundled photograph once, centre-cropped "
        "square (distinctive at 16 px, but only as many as are bundled; fewer copied, so that deduplication "
        "removes a minority of the samples, as in the paper)",
    )
    distinct: int = Field(2000, gt=0, description="distinct base images (photos: at most this many)")
    tile: int = Field(160, ge=32, description="side of each base image in pixels")


class RayConfig(Section):
    """Where ``executor: ray`` runs (README, "On a cluster")."""

    address: str | None = Field(
        None,
        description="a running Ray cluster to join ('auto', 'ray://head:10001'); none starts a local "
        "cluster for this run and stops it at the end",
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs of that local cluster [default: all]")


def extension_section(name: str) -> type[Section] | None:
    """A config section another package owns (dedup.core.extensions, group ``dedup.sections``): the attack
    package registers its AttackConfig, so dedup validates its settings without importing it."""
    from dedup.core.extensions import SECTIONS, extension

    return extension(SECTIONS, name)


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
    source_options: ImportConfig = Field(default_factory=ImportConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    write: WriteConfig = Field(default_factory=WriteConfig)
    attack: SerializeAsAny[Section] = Field(
        default_factory=lambda: _extension_or_empty("attack"),
        description="the attack stage's settings; owned and documented by attack/config.py",
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    demo: DemoConfig | None = None
    stages: list[str] = Field(
        default_factory=lambda: ["download", "embed", "cluster", "write", "report"],
        description="names from the stage registry (dedup/stages.py), run in the registry's order",
    )

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        from dedup.stages import stage_names

        known = stage_names()
        unknown = [s for s in v if s not in known]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        return v

    @field_validator("attack", mode="before")
    @classmethod
    def _attack_section(cls, v: Any) -> Any:
        section = extension_section("attack")
        if section is None:
            if v:
                raise ValueError("the attack package is not installed (pip install dedup)")
            return Section()
        return v if isinstance(v, section) else section.model_validate(v or {})

    @field_validator("workdir")
    @classmethod
    def _workdir_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


S = TypeVar("S", bound=Section)


def _extension_or_empty(name: str) -> Section:
    section = extension_section(name)
    return section() if section is not None else Section()


def _first_error(err: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    e = err.errors()[0]
    inner = (e.get("ctx") or {}).get("error")
    if isinstance(inner, ValidationError):  # an extension section's own error, raised in a validator
        return _first_error(inner, prefix + tuple(e["loc"]))
    loc = ".".join(str(x) for x in prefix + tuple(e["loc"])) or "(top level)"
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
        config = PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{path}: {_first_error(err)}") from None
    return resolve_paths(config, path.parent, data)


# Paths a config names, resolved against the config's own folder (as compose files and most build
# tools do), so `dedup run sub/c.yaml` means the same from any directory. cluster.ground_truth is
# relative to the work directory instead (the demo's ground truth lives there).
CONFIG_PATHS = (
    ("workdir",),
    ("source",),
    ("download", "url_list"),
    ("embed", "from_precomputed"),
    ("cluster", "against"),
)


def resolve_paths(config: PipelineConfig, folder: Path, given: dict[str, Any]) -> PipelineConfig:
    """Relative local paths the YAML gave, made absolute against ``folder``; URLs and absolute
    paths, and settings the YAML did not give, stay as they are."""
    for where in CONFIG_PATHS:
        raw: Any = given
        for part in where:
            raw = raw.get(part) if isinstance(raw, dict) else None
        if not isinstance(raw, str) or "://" in raw or Path(raw).is_absolute():
            continue
        section: Any = config
        for part in where[:-1]:
            section = getattr(section, part)
        setattr(section, where[-1], str((folder / raw).resolve()))
    return config


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
