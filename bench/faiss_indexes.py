"""This project's partitioned search against FAISS's own indexes, on easy and on clustered data (#14).

``python -m bench.faiss_indexes [N ...] [--dist iso|zipf] [--methods ivf,faiss-ivfflat,...]``

Data: N unit 512-d vectors with 1 % planted near-duplicates (1-3 noisy copies at cosine ~0.95-0.98),
either isotropic (``iso``: the easy case, balanced partitions) or a mixture of 20,000 clusters with
Zipf-distributed sizes (``zipf``: like real image embeddings, where product shots, memes and stock
photos crowd a few regions), with the planted copies on top. Vectors are written once to a float16
memory-mapped file in chunks, so N = 10^7 never sits in memory whole.

Methods, all asked for the top k = 16 neighbours with cosine >= 0.9:
- ``ivf``: this project's search (dedup/cluster/ivf.py: spherical k-means, 2*sqrt(N) partitions, 8 probes,
  one GEMM per partition, in a 128-d PCA sketch with a bound that loses no pair, candidates rescored
  from the float16 rows of the memory map);
- ``ivf-full``: the same search in all 512 dimensions (the default before the sketch);
- ``faiss-ivfflat``: ``IndexIVFFlat`` (inner product, the same nlist and nprobe): holds every vector
  as float32 in RAM;
- ``faiss-ivfsq8``: ``IndexIVFScalarQuantizer`` with 8-bit codes (a quarter of the memory), then the
  hits rescored from the float16 vectors;
- ``faiss-hnsw``: ``IndexHNSWFlat`` (M = 32, efSearch = 64).

Recall is against exact search for 2,000 sampled queries over all N (~120 true pairs: a coarse
measure), and over every planted pair (~15,000 per 10^6 vectors). Above 2 x 10^6 vectors FAISS is
searched with the 2,000 recall queries plus a sample of 100,000, and its search time extrapolated.
Each (N, data, method) runs in its own process (peak RSS is its own) and is kept in
``bench/out/faiss_indexes.jsonl``: a rerun skips what is done, so a long run can stop and resume.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D, K, THRESHOLD, PROBES = 512, 16, 0.9, 8
OUT = Path(__file__).resolve().parent / "out"
RESULTS = OUT / "faiss_indexes.jsonl"
CHUNK = 200_000
QUERIES = 10_000
SEARCH_ALL_UP_TO = 2_000_000  # beyond, FAISS is searched with a sample of queries
QUERY_SAMPLE = 100_000


def _path(n: int, dist: str) -> Path:
    return OUT / f"vectors_{dist}_{n}.f16"


def make_vectors(n: int, dist: str, seed: int = 0) -> np.memmap:
    """The benchmark's vectors on disk (made once, chunk by chunk)."""
    path = _path(n, dist)
    if path.exists() and path.stat().st_size == n * D * 2 and _planted_path(path).exists():
        return np.memmap(path, dtype=np.float16, mode="r", shape=(n, D))
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    x = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(n, D))
    centres, planted = None, []
    if dist == "zipf":
        centres = rng.standard_normal((20_000, D), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, 20_001) ** 1.1
        weights /= weights.sum()
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        v = rng.standard_normal((m, D), dtype=np.float32)
        if centres is not None:
            # members share a centre (cosine ~0.5-0.8 to each other): alike, not duplicates
            owner = rng.choice(len(centres), size=m, p=weights)
            v = centres[owner] * 1.5 + v / np.sqrt(D) * rng.uniform(0.8, 1.6, size=(m, 1)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        # 1 % of each chunk gets 1-3 near copies inside the chunk
        src = rng.choice(m, size=max(1, m // 100), replace=False)
        free = np.setdiff1d(np.arange(m), src)
        copies = np.repeat(src, rng.integers(1, 4, size=len(src)))
        dst = rng.choice(free, size=len(copies), replace=False)
        noise = rng.uniform(0.2, 0.33, size=(len(dst), 1)).astype(np.float32)
        v[dst] = v[copies] + noise * rng.standard_normal((len(dst), D), dtype=np.float32) / np.sqrt(D)
        v[dst] /= np.linalg.norm(v[dst], axis=1, keepdims=True)
        x[lo : lo + m] = v.astype(np.float16)
        planted.append(lo + np.stack([np.minimum(copies, dst), np.maximum(copies, dst)], axis=1))
    x.flush()
    del x
    np.save(_planted_path(path), np.concatenate(planted))
    os.replace(tmp, path)
    return np.memmap(path, dtype=np.float16, mode="r", shape=(n, D))


def _planted_path(path: Path) -> Path:
    return path.with_suffix(".planted.npy")


def planted_pairs(n: int, dist: str) -> np.ndarray:
    """(i < j) rows of the planted near-copies: every one a true pair (cosine ~0.95-0.98), ~1.5 % of N
    of them, a far finer recall measure than the 2,000 sampled queries' ~120 pairs."""
    return np.load(_planted_path(_path(n, dist)))


def _pairs_of(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True) if a != b}


def _faiss_search(x: np.memmap, method: str, asked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """FAISS's index over all of ``x``, searched with every row, or with the rows ``asked`` (a sample:
    the search time is then extrapolated to all N, and said so)."""
    import faiss

    from dedup.cluster.ivf import KMEANS_ROWS_PER_CENTROID, default_nlist

    n = len(x)
    nlist = default_nlist(n)
    timings: dict = {}
    started = time.time()
    if method == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    else:
        quantizer = faiss.IndexFlatIP(D)
        if method == "faiss-ivfflat":
            index = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, D, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        rng = np.random.default_rng(0)
        train = np.sort(rng.choice(n, size=min(n, KMEANS_ROWS_PER_CENTROID * nlist), replace=False))
        index.train(np.asarray(x[train], dtype=np.float32))
        index.nprobe = PROBES
    timings["train_s"] = round(time.time() - started, 1)
    for lo in range(0, n, CHUNK):
        index.add(np.asarray(x[lo : lo + CHUNK], dtype=np.float32))
    timings["add_s"] = round(time.time() - started - timings["train_s"], 1)
    rows = np.arange(n) if asked is None else asked
    ii, jj = [], []
    for lo in range(0, len(rows), QUERIES):
        at = rows[lo : lo + QUERIES]
        q = np.asarray(x[at], dtype=np.float32)
        sims, idx = index.search(q, K + 1)
        if method == "faiss-ivfsq8":  # 8-bit codes: rescore the hits with the real vectors
            ok = idx >= 0
            base = np.asarray(x[np.where(ok, idx, 0).ravel()], dtype=np.float32).reshape(len(q), K + 1, D)
            sims = np.where(ok, np.einsum("qd,qkd->qk", q, base), -1.0)
        r, c = np.nonzero((idx >= 0) & (sims >= THRESHOLD))
        ii.append(at[r])
        jj.append(idx[r, c])
    searched = time.time() - started - timings["train_s"] - timings["add_s"]
    timings["search_s"] = round(searched * n / len(rows), 1)
    if asked is not None:
        timings["searched_queries"] = len(rows)
    return np.concatenate(ii), np.concatenate(jj), timings


def _reference(x: np.memmap, q: np.ndarray) -> set[tuple[int, int]]:
    """Exact top-(K+1) at cosine >= THRESHOLD for the rows ``q``, streaming the base in chunks (10^7
    float32 vectors would not fit beside everything else)."""
    xq = np.asarray(x[q], dtype=np.float32)
    hit_q, hit_j, hit_s = [], [], []
    for lo in range(0, len(x), 50_000):
        sims = xq @ np.asarray(x[lo : lo + 50_000], dtype=np.float32).T
        r, c = np.nonzero(sims >= THRESHOLD)
        hit_q.append(r)
        hit_j.append(lo + c)
        hit_s.append(sims[r, c])
    r, j, sim = np.concatenate(hit_q), np.concatenate(hit_j), np.concatenate(hit_s)
    truth = set()
    for a in range(len(q)):
        mine = np.flatnonzero(r == a)
        best = mine[np.argsort(-sim[mine], kind="stable")[: K + 1]]
        truth |= _pairs_of(np.full(len(best), q[a]), j[best])
    return truth


def run_one(n: int, dist: str, method: str) -> dict:
    from dedup.cluster.ivf import default_nlist, ivf_search

    x = make_vectors(n, dist)
    rng = np.random.default_rng(1)
    q = np.sort(rng.choice(n, size=min(n, 2000), replace=False))
    started = time.time()
    extra: dict = {}
    nlist = default_nlist(n)
    asked = None
    if method in ("ivf", "ivf-full"):  # ivf-full: the same search without the 128-d sketch
        c = ivf_search(x, K, THRESHOLD, nprobe=PROBES, reduce_dim=128 if method == "ivf" else None)
        found = _pairs_of(c.i, c.j)
    else:
        if n > SEARCH_ALL_UP_TO:  # the recall queries, then a sample for the time
            sample = np.random.default_rng(2).choice(n, size=QUERY_SAMPLE, replace=False)
            asked = np.concatenate([q, np.sort(np.setdiff1d(sample, q))])
        i, j, extra = _faiss_search(x, method, asked)
        found = _pairs_of(i, j)
    seconds = time.time() - started
    if "searched_queries" in extra:  # the sampled search's time stands for all N queries
        seconds = extra["train_s"] + extra["add_s"] + extra["search_s"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    truth = _reference(x, q)
    planted = planted_pairs(n, dist)
    if asked is not None:  # FAISS searched with a sample finds only the sample's pairs
        planted = planted[np.isin(planted, asked).any(axis=1)]
    hit = np.fromiter(((int(a), int(b)) in found for a, b in planted), dtype=bool, count=len(planted))
    recall = float(np.mean([p in found for p in truth])) if truth else 1.0
    return {
        "n": n,
        "dist": dist,
        "method": method,
        "nlist": nlist,
        "seconds": round(seconds, 1),
        **extra,
        "pairs": len(found),
        "recall_vs_exact": round(recall, 4),
        "planted_recall": round(float(hit.mean()), 4),
        "planted_pairs": len(planted),
        "true_pairs_sampled": len(truth),
        "peak_rss_mb": round(peak),
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(run_one(int(argv[1]), argv[2], argv[3])))
        return
    dists, methods, sizes = (
        ["iso", "zipf"],
        ["ivf", "ivf-full", "faiss-ivfflat", "faiss-ivfsq8", "faiss-hnsw"],
        [],
    )
    args = iter(argv)
    for a in args:
        if a == "--dist":
            dists = next(args).split(",")
        elif a == "--methods":
            methods = next(args).split(",")
        else:
            sizes.append(int(float(a)))
    sizes = sizes or [100_000, 1_000_000]
    done = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            r = json.loads(line)
            done[(r["n"], r["dist"], r["method"])] = r
    for n in sizes:
        for dist in dists:
            for method in methods:
                if (n, dist, method) in done:
                    print(done[(n, dist, method)], flush=True)
                    continue
                out = subprocess.run(
                    [sys.executable, "-m", "bench.faiss_indexes", "--one", str(n), dist, method],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(f"{n} {dist} {method}: failed\n{out.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                with open(RESULTS, "a") as f:
                    f.write(json.dumps(r) + "\n")
                done[(n, dist, method)] = r
                print(r, flush=True)
    print("\n| N | data | search | seconds | recall vs exact | planted recall | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in done.values():
        print(
            f"| {r['n']:,} | {r['dist']} | {r['method']} | {r['seconds']} | {r['recall_vs_exact']} | "
            f"{r.get('planted_recall', '-')} | {r['peak_rss_mb']:,} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
