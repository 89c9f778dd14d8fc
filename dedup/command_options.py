"""The stage commands' own options (dedup/cli.py), typed once: each help ends with the default the typed
config holds (``option``), so a command's signature lists names, not a second copy of the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dedup.core.config import ClusterConfig, DownloadConfig, EmbedConfig, ImportConfig, WriteConfig
from dedup.options import option

DownloadUrlList = Annotated[
    Path, typer.Argument(help="URL list: parquet, csv, tsv, jsonl, json or txt (or a folder).")
]
DownloadInputFormat = Annotated[
    str | None, typer.Option(help="Format of URL_LIST; inferred from its suffix.")
]
DownloadUrlCol = Annotated[str | None, typer.Option(help="URL column. \\[default: URL, as in LAION]")]
DownloadCaptionCol = Annotated[str | None, option(DownloadConfig, "caption_col", "Caption column.")]
DownloadSaveAdditionalColumns = Annotated[
    list[str] | None, typer.Option(help="Extra input columns to keep in each sample's json (repeatable).")
]
DownloadImageSize = Annotated[int | None, option(DownloadConfig, "image_size", "Target size in pixels.")]
DownloadResizeMode = Annotated[
    str | None,
    option(DownloadConfig, "resize_mode", "no | border | keep_ratio | keep_ratio_largest | center_crop."),
]
DownloadResizeOnlyIfBigger = Annotated[
    bool | None,
    option(DownloadConfig, "resize_only_if_bigger", "Never upscale."),
]
DownloadEncodeFormat = Annotated[
    str | None,
    option(DownloadConfig, "encode_format", "jpg | png | webp, for re-encoded images."),
]
DownloadSkipReencode = Annotated[
    bool | None,
    option(DownloadConfig, "skip_reencode", "Keep the original bytes when no resize is needed."),
]
DownloadProcesses = Annotated[int | None, option(DownloadConfig, "processes", "Download processes.")]
DownloadThreads = Annotated[int | None, option(DownloadConfig, "threads", "Threads per process.")]
DownloadSamplesPerShard = Annotated[
    int | None,
    option(DownloadConfig, "samples_per_shard", "Samples per output shard."),
]
DownloadTimeout = Annotated[int | None, option(DownloadConfig, "timeout", "Seconds per request.")]
DownloadRetries = Annotated[int | None, option(DownloadConfig, "retries", "Retries per URL.")]
DownloadMaxImageArea = Annotated[
    int | None,
    option(
        DownloadConfig,
        "max_image_area",
        "Refuse images with more pixels than this, from the header (decompression bombs).",
    ),
]
DownloadMinImageSize = Annotated[
    int | None,
    option(DownloadConfig, "min_image_size", "Refuse images smaller than this."),
]
DownloadRespectRobots = Annotated[
    bool | None,
    typer.Option(
        "--respect-robots/--ignore-robots",
        help="Skip images whose X-Robots-Tag says noai, noimageai, noindex or noimageindex. "
        "\\[default: respect]",
    ),
]
DownloadAllowFileUrls = Annotated[
    bool | None,
    option(
        DownloadConfig,
        "allow_file_urls",
        "Download file:// and other non-http(s) URLs too (refused by default: a URL list could "
        "pull this machine's files into the dataset).",
    ),
]
DownloadIncremental = Annotated[
    bool | None,
    option(
        DownloadConfig,
        "incremental",
        "Resume: skip shards already in WORKDIR; --no-incremental redoes everything.",
    ),
]
DownloadDistributor = Annotated[
    str | None,
    option(DownloadConfig, "distributor", "multiprocessing | pyspark | ray."),
]
EmbedEmbedder = Annotated[
    str | None,
    option(EmbedConfig, "embedder", "clip (open_clip) | descriptor (weight-free, offline)."),
]
EmbedModel = Annotated[str | None, option(EmbedConfig, "model", "open_clip model name.")]
EmbedPretrained = Annotated[
    str | None,
    option(
        EmbedConfig, "pretrained", "open_clip pretrained tag, or a local checkpoint file for offline use."
    ),
]
EmbedBatchSize = Annotated[int | None, option(EmbedConfig, "batch_size", "Images per model batch.")]
EmbedWorkers = Annotated[
    int | None,
    option(EmbedConfig, "workers", "Decode threads running ahead of the model."),
]
EmbedDevice = Annotated[str | None, option(EmbedConfig, "device", "auto | cpu | cuda.")]
EmbedPrecision = Annotated[
    str | None,
    option(EmbedConfig, "precision", "auto (fp16/bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
]
EmbedFromPrecomputed = Annotated[
    Path | None,
    typer.Option(
        help="Import released embeddings (img_emb/*.npy + metadata/*.parquet, clip-retrieval "
        "layout) joined by key or URL, instead of running a model."
    ),
]
EmbedEmbedMissing = Annotated[
    bool | None,
    typer.Option(
        "--embed-missing/--refuse-missing",
        help="With --from-precomputed: embed the images the released vectors lack with --model/"
        "--pretrained (the model that made them), or refuse such a source. \\[default: refuse]",
    ),
]
ClusterSignals = Annotated[
    str | None, typer.Option(help="Comma-separated: exact,phash,embedding. \\[default: all three]")
]
ClusterEmbeddingThreshold = Annotated[
    float | None,
    typer.Option(help="Cosine at or above which two images are duplicates. \\[default: per embedder]"),
]
ClusterCandidateThreshold = Annotated[
    float | None,
    typer.Option(
        help="Lowest cosine for which a pair gets a local-feature check (--verify orb). "
        "\\[default: per embedder]"
    ),
]
ClusterPhashThreshold = Annotated[
    int | None,
    option(ClusterConfig, "phash_threshold", "Perceptual-hash Hamming distance (of 64 bits) for duplicates."),
]
ClusterVerify = Annotated[
    str | None,
    option(
        ClusterConfig,
        "verify",
        "orb: align each proposed pair (ORB keypoints or a stretch) and compare the aligned "
        "pixels: only a copy agrees everywhere; none: trust pHash/cosine alone.",
    ),
]
ClusterDerived = Annotated[
    str | None,
    option(
        ClusterConfig,
        "derived",
        "Images derived from another (recoloured, an element added or removed, a large "
        "overlay): keep (as distinct) | remove (as duplicates).",
    ),
]
ClusterK = Annotated[int | None, option(ClusterConfig, "k", "Neighbours searched per image.")]
ClusterSearch = Annotated[
    str | None,
    option(ClusterConfig, "search", "auto | exact (FAISS flat) | ivf (k-means partitions, exact inside)."),
]
ClusterGrouping = Annotated[
    str | None,
    option(
        ClusterConfig,
        "grouping",
        "components | representative (members must match the kept image directly) | semdedup.",
    ),
]
ClusterRepresentative = Annotated[
    str | None,
    option(
        ClusterConfig,
        "representative",
        "Which image a group keeps: resolution | first | centroid | farthest | caption.",
    ),
]
ClusterAgainst = Annotated[
    Path | None,
    typer.Option(
        help="Another work directory (embedded with the same embedder) to deduplicate against: "
        "samples that duplicate it are removed; it is not modified."
    ),
]
ClusterForce = Annotated[bool, typer.Option("--force", help="Recompute even if nothing changed.")]
ImportSource = Annotated[
    str,
    typer.Argument(
        help="WebDataset shards (a .tar, a folder of them, a glob or 'dir/{00000..00099}.tar'; read "
        "in place), a folder of images (recursively; captions from sidecar .txt/.json) or parquet "
        "file(s) with image bytes (Hugging Face layout: an 'image' struct with bytes/path). A path "
        "or an fsspec URL (file://, s3://, gs://, hf:// with that package installed)."
    ),
]
ImportCaptionCol = Annotated[
    str | None,
    option(
        ImportConfig, "caption_col", "Parquet caption column; none: text, caption or TEXT, whichever it has."
    ),
]
ImportSamplesPerShard = Annotated[
    int | None, option(DownloadConfig, "samples_per_shard", "Samples per WebDataset shard.")
]
ImportRekey = Annotated[
    bool | None,
    option(
        ImportConfig,
        "rekey",
        "Shards whose keys repeat across tars (each numbered from 000000): copy them into the work "
        "dir keyed <tar name>/<key>, every member's bytes unchanged, instead of reading them in "
        "place. Without it such shards are refused.",
    ),
]
WriteSamplesPerShard = Annotated[
    int | None,
    option(WriteConfig, "samples_per_shard", "Samples per output shard."),
]
WriteWorkers = Annotated[
    int | None,
    option(WriteConfig, "workers", "Shards written at once; the output does not depend on it."),
]
WriteDryRun = Annotated[
    bool, typer.Option("--dry-run", help="Only say what would be removed (samples, bytes, by reason).")
]
