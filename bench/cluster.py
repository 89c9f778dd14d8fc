"""Cluster-search benchmark: time, peak memory and pair recall for N synthetic 512-d vectors.

Near-duplicates are planted (1% of the points get 1-3 noisy copies at cosine ~0.95-0.98); recall is
measured against the planted pairs and, for a sample of queries, against exact search. Each N runs in
its own process so peak RSS is per run. Usage: python -m bench.cluster [N ...]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

D = 512
THRESHOLD = 0.9
K = 16


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D), dtype=np.float32)
    n_src = max(1, n // 100)
    src = rng.choice(n, size=n_src, replace=False)
    copies = rng.integers(1, 4, size=n_src)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), size=int(copies.sum()), replace=False)
    owners = np.repeat(src, copies)
    noise = rng.uniform(0.2, 0.33, size=len(dst)).astype(np.float32)[:, None]
    x[dst] = x[owners] + noise * rng.standard_normal((len(dst), D), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = np.stack([np.minimum(owners, dst), np.maximum(owners, dst)], axis=1)
    return x, pairs


def run_one(n: int, method: str) -> dict:
    from dedup.cluster.ivf import ivf_search
    from dedup.cluster.search import exact_search

    x, pairs = planted(n)
    t0 = time.time()
    c = ivf_search(x, K, THRESHOLD) if method == "ivf" else exact_search(x, K, THRESHOLD)
    seconds = time.time() - t0
    found = set(zip(c.i.tolist(), c.j.tolist(), strict=True))
    planted_recall = np.mean([(int(a), int(b)) in found for a, b in pairs])
    # recall vs exact search, on a sample of queries (exact over all N is the reference)
    rng = np.random.default_rng(1)
    q = rng.choice(n, size=min(n, 2000), replace=False)
    ref = exact_search(x, K, THRESHOLD, queries=x[q])
    ref_pairs = {
        (min(int(q[a]), int(b)), max(int(q[a]), int(b)))
        for a, b in zip(ref.i, ref.j, strict=True)
        if int(q[a]) != int(b)
    }
    vs_exact = np.mean([p in found for p in ref_pairs]) if ref_pairs else 1.0
    return {
        "n": n,
        "method": method,
        "seconds": round(seconds, 2),
        "pairs": len(found),
        "planted_recall": round(float(planted_recall), 4),
        "recall_vs_exact": round(float(vs_exact), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(run_one(int(argv[1]), argv[2])))
        return
    sizes = [int(a) for a in argv] or [10_000, 100_000, 1_000_000]
    rows = []
    for n in sizes:
        for method in ["exact", "ivf"] if n <= 100_000 else ["ivf"]:
            out = subprocess.run(
                [sys.executable, "-m", "bench.cluster", "--one", str(n), method],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("\n| N | search | seconds | peak RSS (MB) | planted-pair recall | recall vs exact |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['method']} | {r['seconds']} | {r['peak_rss_mb']} | {r['planted_recall']} | "
            f"{r['recall_vs_exact']} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
