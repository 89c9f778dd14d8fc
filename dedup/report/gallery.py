"""The report's galleries: the largest duplicate groups and the pairs nearest the decision, as
thumbnails with the verifier's evidence (why a pair was called a copy or kept apart)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from dedup.core.config import ReportConfig
from dedup.core.files import read_json
from dedup.core.layout import WorkDir

THUMB = 112


CAPTION_CHARS = 300


def caption_text(value: Any) -> str:
    """A caption as shown, cut to CAPTION_CHARS (a scraped caption can be a megabyte); the template
    escapes it."""
    text = "" if value is None else str(value)
    if len(text) > CAPTION_CHARS:
        text = f"{text[:CAPTION_CHARS]}… ({len(text):,} characters)"
    return text


def thumbnails(work: WorkDir, keys: set[str], folder: Path) -> dict[str, str]:
    """Small JPEG files for the given sample keys (one pass over the shards); key -> relative path."""
    from dedup.core.shards import input_samples

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    if not keys:
        return out
    for shard in work.download_shards():
        for sample in input_samples(work.input_tar(shard)):
            if sample.key not in keys or sample.image is None:
                continue
            try:
                with Image.open(io.BytesIO(sample.image)) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    im.thumbnail((THUMB, THUMB))
                    name = f"{len(out):05d}.jpg"
                    im.save(folder / name, "JPEG", quality=85)
                    out[sample.key] = f"{folder.name}/{name}"
            except Exception:  # an undecodable image simply has no thumbnail
                continue
    return out


def array_thumb(image: np.ndarray, path: Path) -> str:
    im = Image.fromarray(image)
    scale = max(1, THUMB // max(im.size))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path, "PNG")
    return f"{path.parent.name}/{path.name}"


def galleries(work: WorkDir, clusters: pl.DataFrame, config: ReportConfig, out: Path) -> dict[str, Any]:
    meta = pl.concat(
        [
            pl.read_parquet(work.metadata(s), columns=["key", "caption", "url", "width", "height"])
            for s in work.download_shards()
            if work.metadata(s).exists()
        ]
    )
    df = clusters.join(meta, on="key", how="left")
    largest = (
        df.group_by("cluster_id")
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort(["n", "cluster_id"], descending=[True, False])
        .head(config.gallery_groups)
    )
    groups = df.filter(pl.col("cluster_id").is_in(largest["cluster_id"].to_list()))
    shown = (
        groups.sort(
            ["cluster_id", "is_representative", "similarity_to_representative"],
            descending=[False, True, False],
        )
        .group_by("cluster_id", maintain_order=True)
        .head(9)
    )
    pairs = pl.read_parquet(work.pairs) if work.pairs.exists() else None
    border = _borderline(work, pairs, config)
    keys = set(shown["key"].to_list()) | (
        set(border["key_a"].to_list()) | set(border["key_b"].to_list()) if border.height else set()
    )
    thumbs = thumbnails(work, keys, out / "thumbs")
    info = {r["key"]: r for r in df.iter_rows(named=True)}
    evidence = _pair_evidence(pairs)
    out_groups = []
    for cid in largest["cluster_id"].to_list():
        members = shown.filter(pl.col("cluster_id") == cid)
        n = int(largest.filter(pl.col("cluster_id") == cid)["n"][0])
        out_groups.append(
            {
                "id": cid,
                "size": n,
                "more": n - members.height if n > members.height else 0,
                "members": [
                    {
                        "thumb": thumbs.get(r["key"]),
                        "kept": bool(r["is_representative"]),
                        "signal": r["signal"],
                        "similarity": f"{r['similarity_to_representative']:.3f}",
                        "evidence": _evidence(evidence.get(_pair_key(r["key"], r["representative_key"]))),
                        "caption": caption_text(r["caption"]),
                    }
                    for r in members.iter_rows(named=True)
                ],
            }
        )
    borderline = []
    for r in border.iter_rows(named=True):
        sides = []
        for side in ("key_a", "key_b"):
            k = r[side]
            sides.append(
                {
                    "thumb": thumbs.get(k),
                    "kept": bool(info.get(k, {}).get("is_representative")),
                    "caption": caption_text(info.get(k, {}).get("caption")),
                }
            )
        borderline.append(
            {
                "sides": sides,
                "verdict": "duplicate" if r["duplicate"] else "kept apart",
                "cosine": f"{r['similarity']:.3f}",
                "phash": r["phash_distance"],
                "proposed_by": r.get("proposed_by") or "",
                "signal": r["signal"],
                "evidence": _evidence(r),
            }
        )
    return {"groups": out_groups, "borderline": borderline}


def _borderline(work: WorkDir, pairs: pl.DataFrame | None, config: ReportConfig) -> pl.DataFrame:
    """The pairs nearest the decision: the verifier's copy threshold where it looked, else the cosine's."""
    if pairs is None:
        return pl.DataFrame()
    from dedup.cluster.verifier_settings import COPY_MATCH

    cs = read_json(work.cluster_summary) if work.cluster_summary.exists() else {}
    t = float(cs.get("embedding_threshold", 0.95))
    return (
        pairs.filter(pl.col("signal") != "exact")
        .with_columns(
            pl.when(pl.col("pixel_match").is_not_null())
            .then((pl.col("pixel_match") - COPY_MATCH).abs())
            .otherwise((pl.col("similarity") - t).abs())
            .alias("gap")
        )
        .sort("gap", "key_a", "key_b")
        .head(config.borderline_pairs)
    )


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _pair_evidence(pairs: pl.DataFrame | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The verifier's evidence per (unordered) pair of keys, where it looked."""
    if pairs is None or "verdict" not in pairs.columns:
        return {}
    looked = pairs.filter(pl.col("verdict").is_not_null())
    return {_pair_key(r["key_a"], r["key_b"]): r for r in looked.iter_rows(named=True)}


def _evidence(r: dict[str, Any] | None) -> dict[str, Any] | None:
    """Why the verifier called a pair what it did (None when it did not look)."""
    if not r or r.get("verdict") is None:
        return None
    return {
        "verdict": r["verdict"],
        "pixel": f"{100 * r['pixel_match']:.0f}",
        "coverage": f"{100 * r['coverage']:.0f}",
        "colour": f"{100 * r['color_match']:.0f}",
        "inliers": r["orb_inliers"],
    }
