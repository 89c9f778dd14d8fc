"""Time against N: where each tool stops scaling (1k, 10k, 100k images).

Synthetic variants of real photographs, as the issue allows for large N: each image is a random
window (35-70 % a side) of one of the benchmark's real photographs (bench/copydetect.py's sources),
possibly mirrored, with its own colour balance, at most 256 px a side; one in ten is a planted copy
(re-encoded, rescaled or mirrored) of an earlier image. Windows of one photograph overlap, so the
look-alikes a real crawl holds (crops of one picture, shots of one scene) are there to be verified.

Each (method, N) runs in its own process under a wall-clock cap (``--cap``, 900 s by default); one
that hits the cap is recorded as stopped there, and a method is not run at a larger N once it was
stopped or once its time at the smaller N, scaled linearly, already passes the cap (the table says
which). Results are kept per (method, N) in bench/out/scaling/results and reused on the next run, so
a long run resumes where it stopped (``--fresh`` discards them). Peers are installed beside the
project as for bench.peers; missing peers are listed as "not installed".

``python -m bench.scaling [--sizes 1000,10000,100000] [--cap 900] [--methods ...] [--mix mosaic]``

``--mix mosaic`` is the less adversarial mix: each image a 2 x 2 mosaic of small windows of four random
photographs (few look-alikes per image), 10 % planted copies as above. This project's row covers the
whole job: import, embed, cluster and write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path("bench/out/scaling")
SIZES = (1_000, 10_000, 100_000)
CAP_S = 900.0
SIDE = 256
COPY_SHARE = 0.1
RECENT = 500  # a planted copy is of one of the last RECENT images
SEED = 7
METHODS = ("dedup (default)", "imagededup PHash", "perception PDQ", "cleanvision")


def _variant(base, rng: np.random.Generator, share: tuple[float, float] = (0.35, 0.7), side: int = SIDE):
    """A random window of ``base`` with its own colour balance: a distinct image (mostly)."""
    from PIL import Image, ImageEnhance, ImageOps

    w, h = base.size
    fw, fh = rng.uniform(*share, size=2)
    cw, ch = max(int(w * fw), 16), max(int(h * fh), 16)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = base.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.6, 1.4)))
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
    s = side / max(im.size)
    return im.resize((max(round(im.width * s), 1), max(round(im.height * s), 1)), Image.BICUBIC)


def _mosaic(pool: list, rng: np.random.Generator):
    """The less adversarial mix: a 2 x 2 mosaic of small windows (15-30 % a side) of four random
    photographs, each with its own colour balance. Two mosaics rarely share a tile, so an image has few
    look-alikes (as in a crawl, where most images are unrelated), while every tile is a real photo."""
    from PIL import Image

    tiles = [_variant(pool[int(rng.integers(len(pool)))], rng, (0.15, 0.3), SIDE // 2) for _ in range(4)]
    out = Image.new("RGB", (SIDE, SIDE))
    for t, tile in enumerate(tiles):
        out.paste(
            tile.convert("RGB").resize((SIDE // 2, SIDE // 2)), ((t % 2) * SIDE // 2, (t // 2) * SIDE // 2)
        )
    return out


def _copy_of(im, rng: np.random.Generator):
    from PIL import Image, ImageOps

    kind = int(rng.integers(0, 3))
    if kind == 1:
        s = float(rng.uniform(0.5, 0.8))
        return im.resize((max(round(im.width * s), 1), max(round(im.height * s), 1)), Image.BICUBIC)
    if kind == 2:
        return ImageOps.mirror(im)
    return im


def build(n: int, root: Path = OUT / "images", mix: str = "windows") -> Path:
    """The first ``n`` images of one deterministic sequence, in ``root/<n>`` (hard links into
    ``root/all``, so every N sees the same files and the largest N is generated once)."""
    from collections import deque

    from bench.copydetect import _load, source_photos

    if mix != "windows":
        root = root.parent / f"{root.name}-{mix}"
    folder = root / str(n)
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    pool = [_load(p) for _, _, p in source_photos()]
    everything = root / "all"
    everything.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    recent: deque = deque(maxlen=RECENT)  # copies are of a recent image: memory stays bounded
    for t in range(n):
        path = everything / f"{t:06d}.jpg"
        # one draw sequence whatever is on disk, so image t is the same image at every N
        if recent and rng.random() < COPY_SHARE:
            im = _copy_of(recent[int(rng.integers(0, len(recent)))], rng)
        elif mix == "mosaic":
            im = _mosaic(pool, rng)
        else:
            im = _variant(pool[int(rng.integers(len(pool)))], rng)
        recent.append(im)
        quality = int(rng.integers(60, 95))
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            im.convert("RGB").save(tmp, "JPEG", quality=quality)
            os.replace(tmp, path)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        link = folder / f"{t:06d}.jpg"
        if not link.exists():
            os.link(everything / f"{t:06d}.jpg", link)
    return folder


def _ours(folder: Path, n: int) -> dict[str, Any]:
    """This project: import the folder, embed (the weight-free descriptor: no hub here), cluster."""
    import shutil

    import polars as pl

    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig, EmbedConfig, WriteConfig
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import run_import
    from dedup.embed.stage import run_embed
    from dedup.write.stage import run_write

    work = WorkDir(OUT / "work" / f"{folder.parent.name}-{n}")
    shutil.rmtree(work.root, ignore_errors=True)
    stages: dict[str, float] = {}
    t = time.time()
    run_import(folder, work)
    stages["import"] = time.time() - t
    t = time.time()
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    stages["embed"] = time.time() - t
    t = time.time()
    summary = run_cluster(ClusterConfig(), work, progress=False)
    stages["cluster"] = time.time() - t
    t = time.time()
    run_write(WriteConfig(), work, progress=False)
    stages["write"] = time.time() - t
    clusters = pl.read_parquet(work.clusters)
    removed = int((clusters["key"] != clusters["representative_key"]).sum())
    pairs = pl.read_parquet(work.pairs).height if work.pairs.exists() else None
    return {
        "removed": removed,
        "stages": stages,
        "pair_rows": pairs,  # candidate pairs in pairs.parquet (proposed, not all verified)
        "summary_seconds": summary.get("seconds"),
        "tiers": summary.get("tiers"),
        "verify_units": summary.get("verify_units"),
    }


def _peer(method: str, folder: Path) -> dict[str, Any]:
    """A peer at its default setting, called as bench.peers calls it; the count of pairs it reports."""
    from bench.peers import PEERS, cleanvision_pairs, imagededup_pairs, perception_pairs

    sys.path.insert(0, str(PEERS.resolve()))
    if method == "imagededup PHash":
        pairs = imagededup_pairs("PHash", folder, 10, {})  # both directions of each pair
        return {"pairs": len({tuple(sorted(p)) for p in pairs})}
    if method == "perception PDQ":
        import perception.hashers as h

        files = sorted(str(p) for p in folder.glob("*.jpg"))
        return {"pairs": len(perception_pairs(h.PDQHash(), files, 0.2, folder))}
    if method == "cleanvision":
        return {"pairs": len(cleanvision_pairs(folder))}
    raise ValueError(method)


def _child(method: str, folder: str, n: int, queue: Any) -> None:
    os.setpgrp()  # the parent can stop this method and any pool it started, all together
    started = time.time()
    out: dict[str, Any] = {"method": method, "n": n}
    try:
        out.update(_ours(Path(folder), n) if method.startswith("dedup") else _peer(method, Path(folder)))
    except ImportError as err:
        out["note"] = f"not installed ({err.name})"
    except Exception as err:  # a method's failure is a result to report, not a crash of the benchmark
        out["note"] = f"failed: {str(err).splitlines()[0][:100] if str(err) else type(err).__name__}"
    out["seconds"] = time.time() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pool = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["rss_mb"] = max(own, pool)
    queue.put(out)


def run_one(method: str, folder: Path, n: int, cap: float) -> dict[str, Any]:
    """One (method, N) in its own process group, stopped at ``cap`` seconds."""
    import queue as queue_mod
    import signal

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(method, str(folder), n, q))
    started = time.time()
    p.start()
    try:
        while time.time() - started < cap:
            try:
                return q.get(timeout=1.0)
            except queue_mod.Empty:
                if not p.is_alive():  # killed (out of memory) or crashed without a word
                    return {"method": method, "n": n, "seconds": time.time() - started,
                            "note": f"died (exit code {p.exitcode})"}  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        return {"method": method, "n": n, "seconds": time.time() - started, "stopped": True,
                "note": f"stopped at the {cap:.0f} s cap"}  # fmt: skip
    finally:
        p.join(timeout=30)


def _result_path(method: str, n: int, mix: str = "windows") -> Path:
    folder = OUT / ("results" if mix == "windows" else f"results-{mix}")
    return folder / f"{method.replace(' ', '_').replace('(', '').replace(')', '')}-{n}.json"


def _skip_reason(previous: dict[str, Any] | None, n: int, cap: float) -> str | None:
    """Why a larger N is not run: the smaller one stopped, failed, or already projects past the cap."""
    if previous is None:
        return None
    if previous.get("stopped") or "note" in previous:
        return f"not run: {previous['n']:,} did not finish ({previous.get('note', 'stopped')})"
    projected = previous["seconds"] * n / previous["n"]
    if projected > cap:
        took = f"{previous['n']:,} took {previous['seconds']:.0f} s"
        return f"not run: {took}, linear projection {projected:.0f} s > cap"
    return None


def _row(r: dict[str, Any]) -> str:
    n, secs = r["n"], r.get("seconds")
    done = secs is not None and not r.get("stopped") and "note" not in r
    rate = f"{n / secs:.0f}" if done else "-"
    rss = f"{r['rss_mb']:.0f}" if r.get("rss_mb") else "-"
    found = r.get("removed", r.get("pairs", "-"))
    split = ""
    if "stages" in r:
        split = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
        if r.get("tiers"):
            from dedup.cluster.tables import format_tiers

            split += f"; tiers: {format_tiers(r['tiers'])}"
    secs_s = f"{secs:.0f}" if secs is not None else "-"
    return f"| {r['method']} | {n:,} | {secs_s} | {rate} | {rss} | {found} | {r.get('note', split)} |"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--cap", type=float, default=CAP_S, help="seconds one (method, N) may run")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--mix",
        choices=("windows", "mosaic"),
        default="windows",
        help="windows: overlapping windows of a few photographs (adversarial: many look-alikes); "
        "mosaic: 2x2 mosaics of small windows of random photographs (few look-alikes)",
    )
    parser.add_argument("--fresh", action="store_true", help="discard kept results and run again")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    methods = [m.strip() for m in args.methods.split(",")]
    rows = []
    for method in methods:
        previous = None
        for n in sizes:
            path = _result_path(method, n, args.mix)
            if path.exists() and not args.fresh:
                r = json.loads(path.read_text())
            elif (why := _skip_reason(previous, n, args.cap)) is not None:
                r = {"method": method, "n": n, "seconds": None, "note": why, "skipped": True}
            else:
                t = time.time()
                folder = build(n, mix=args.mix)
                print(f"[{method}] {n:,} images (built in {time.time() - t:.0f} s) ...", flush=True)
                r = run_one(method, folder, n, args.cap)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(r, indent=1))
                os.replace(tmp, path)
            print(_row(r), flush=True)
            rows.append(r)
            if not r.get("skipped"):
                previous = r
    print("\n| method | N | seconds | images/s | peak RSS MB | removed (dedup) / pairs (peers) | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r))


if __name__ == "__main__":
    main(sys.argv[1:])
