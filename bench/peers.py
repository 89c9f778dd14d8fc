"""Peers side by side on the hard-negative benchmark's folder of images (bench/copydetect.py).

Same files, same scoring (``bench.copydetect.score``), one process per method so wall time and peak
RSS are each method's own. Peers: imagededup (PHash, DHash, WHash, AHash at their default Hamming
threshold 10 and at their best threshold by F1; CNN needs hub weights, so it is listed, not run),
cleanvision (near and exact duplicate checks), perception (pHash, PDQ). This project: the default
pipeline (import -> embed -> cluster on the folder) and each signal alone.

The peers are not dependencies of this project: install them beside it, not into its environment:
``pip install --target bench/out/peers --no-deps imagededup cleanvision perception pdqhash`` plus
what they import (scikit-learn, joblib, threadpoolctl, validators, cloudpickle, narwhals, tabulate);
then ``python -m bench.peers``. Missing peers are listed as "not installed".
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

PEERS = Path("bench/out/peers")
THRESHOLDS = (4, 8, 10, 12, 16, 20)


def _components(keys: list[str], pairs: list[tuple[str, str]]) -> pl.DataFrame:
    """clusters table (key, cluster_id, representative_key) from duplicate pairs: connected
    components, the first key of each kept (peers report pairs or sets, not a kept image)."""
    from dedup.cluster.grouping import components

    index = {k: i for i, k in enumerate(keys)}
    ij = np.array([(index[a], index[b]) for a, b in pairs if a in index and b in index], dtype=np.int64)
    labels = components(len(keys), ij[:, 0], ij[:, 1]) if len(ij) else np.arange(len(keys))
    first: dict[int, str] = {}
    for k, lab in sorted(zip(keys, labels.tolist(), strict=True)):
        first.setdefault(lab, k)
    return pl.DataFrame(
        {"key": keys, "cluster_id": labels, "representative_key": [first[lab] for lab in labels.tolist()]}
    )


def _key(path: str, root: Path) -> str:
    rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
    return rel.rsplit(".", 1)[0].replace(".", "_")


def imagededup_pairs(method: str, root: Path, threshold: int, cache: dict) -> list[tuple[str, str]]:
    import imagededup.methods as m

    hasher = getattr(m, method)(verbose=False)
    if method not in cache:
        cache[method] = hasher.encode_images(image_dir=str(root), recursive=True)
    found = hasher.find_duplicates(encoding_map=cache[method], max_distance_threshold=threshold)
    return [(_key(str(root / a), root), _key(str(root / b), root)) for a, bs in found.items() for b in bs]


def cleanvision_pairs(root: Path) -> list[tuple[str, str]]:
    """cleanvision's near and exact duplicate sets as (first of its set, other member) key pairs."""
    from cleanvision import Imagelab

    lab = Imagelab(data_path=str(root))
    lab.find_issues({"near_duplicates": {}, "exact_duplicates": {}}, verbose=False)
    pairs = []
    for kind in ("near_duplicates", "exact_duplicates"):
        for group in lab.info[kind]["sets"]:
            pairs += [(_key(group[0], root), _key(g, root)) for g in group[1:]]
    return pairs


def perception_pairs(hasher: Any, files: list[str], threshold: float, root: Path) -> list[tuple[str, str]]:
    """perception's ``deduplicate`` with one hasher at ``threshold``, as key pairs."""
    from perception.tools import deduplicate

    return [(_key(a, root), _key(b, root)) for a, b in deduplicate(files, hashers=[(hasher, threshold)])]


def run_method(name: str, root: str, queue: Any) -> None:
    """One method in its own process: (name, clusters rows or sweep, seconds, peak RSS MB, note)."""
    sys.path.insert(0, str(PEERS))
    root_p = Path(root)
    files = sorted(str(p) for p in root_p.rglob("*.jpg"))
    keys = [_key(f, root_p) for f in files]
    started = time.time()
    out: dict[str, Any] = {"name": name}
    try:
        if name.startswith("imagededup"):
            method = name.split()[1]
            cache: dict = {}
            out["sweep"] = {
                t: _components(keys, imagededup_pairs(method, root_p, t, cache)).to_dicts()
                for t in THRESHOLDS
            }
        elif name == "cleanvision":
            out["clusters"] = _components(keys, cleanvision_pairs(root_p)).to_dicts()
        elif name.startswith("perception"):
            import perception.hashers as h

            hasher, default = {"perception PHash": (h.PHash(), 0.2), "perception PDQ": (h.PDQHash(), 0.2)}[
                name
            ]
            out["sweep"] = {}
            for t in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
                out["sweep"][t] = _components(keys, perception_pairs(hasher, files, t, root_p)).to_dicts()
            out["default"] = default
        else:
            raise ValueError(name)
    except ImportError as err:
        out["note"] = f"not installed ({err.name})"
    except Exception as err:  # a peer's failure is a result to report, not a crash of the benchmark
        out["note"] = f"failed: {str(err).splitlines()[0][:100]}"
    out["seconds"] = time.time() - started
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def ours(root: Path, truth: pl.DataFrame, out: Path) -> list[dict[str, Any]]:
    """This project on the folder: import, embed (weight-free), cluster with each setting."""
    import shutil

    from bench.copydetect import SETTINGS, score
    from dedup.cluster.stage import run_cluster
    from dedup.core.config import ClusterConfig, EmbedConfig
    from dedup.core.layout import WorkDir
    from dedup.download.ingest import run_import
    from dedup.embed.stage import run_embed

    work = WorkDir(out / "ours")
    shutil.rmtree(work.root, ignore_errors=True)
    started = time.time()
    run_import(root, work)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    prep = time.time() - started
    rows = []
    for name, opts in SETTINGS:
        t0 = time.time()
        run_cluster(ClusterConfig(**opts), work, progress=False, force=True)
        r = score(pl.read_parquet(work.clusters), truth)
        rows.append({"name": f"dedup: {name}", "score": r, "seconds": prep + time.time() - t0})
    return rows


def _row(name: str, r: dict[str, Any], seconds: float, rss: float | None, n: int, note: str = "") -> str:
    pw, oc = r["pairs"], r["outcomes"]
    rss_s = f"{rss:.0f}" if rss else "-"
    return (
        f"| {name} | {pw['precision']:.3f} | {pw['recall']:.3f} | {pw['f1']:.3f} | {r.get('r_at_p99', '-')} "
        f"| {oc['distinct_lost']} | {seconds:.1f} | {n / seconds:.0f} | {rss_s} | {note} |"
    )


def _best(sweep: dict, truth: pl.DataFrame) -> tuple[Any, dict, str]:
    from bench.copydetect import score

    scored = {t: score(pl.DataFrame(rows), truth) for t, rows in sweep.items()}
    best_t = max(scored, key=lambda t: (scored[t]["pairs"]["f1"], -abs(float(t))))
    ok = [s["pairs"]["recall"] for s in scored.values() if s["pairs"]["precision"] >= 0.99]
    r_at = f"{max(ok):.3f}" if ok else "0"
    return best_t, {**scored[best_t], "r_at_p99": r_at}, r_at


def main(argv: list[str]) -> None:
    from bench.copydetect import prepare_workdir

    root = Path(argv[0]) if argv else Path("bench/out/copydetect")
    _, truth = prepare_workdir(root)
    images = root / "images"
    n = truth.height
    print(f"{n} images, the hard-negative benchmark's folder ({images}); one process per method\n")
    print(
        "| method | pair P | pair R | F1 | R at P>=0.99 | distinct lost | seconds | images/s "
        "| peak RSS MB | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    names = ["imagededup PHash", "imagededup DHash", "imagededup WHash", "imagededup AHash", "cleanvision",
             "perception PHash", "perception PDQ"]  # fmt: skip
    from bench.copydetect import score

    for name in names:
        q = ctx.Queue()
        p = ctx.Process(target=run_method, args=(name, str(images), q))
        p.start()
        res = q.get()
        p.join()
        if "note" in res:
            print(f"| {name} | - | - | - | - | - | {res['seconds']:.1f} | - | - | {res['note']} |")
            continue
        if "sweep" in res:
            default = res.get("default", 10)
            d = score(pl.DataFrame(res["sweep"][default]), truth)
            best_t, best, r_at = _best(res["sweep"], truth)
            d["r_at_p99"] = r_at
            secs = res["seconds"] / len(res["sweep"])  # one threshold's worth (encoding is shared)
            print(_row(f"{name} (default {default})", d, secs, res["rss_mb"], n), flush=True)
            print(_row(f"{name} (best, {best_t})", best, secs, res["rss_mb"], n), flush=True)
        else:
            print(
                _row(name, score(pl.DataFrame(res["clusters"]), truth), res["seconds"], res["rss_mb"], n),
                flush=True,
            )
    print(
        "| imagededup CNN | - | - | - | - | - | - | - | - "
        "| needs hub weights (MobileNetV3 from torchvision's hub) |"
    )
    for row in ours(images, truth, root):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            _row(row["name"], row["score"], row["seconds"], rss, n, "RSS: whole benchmark process"),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
