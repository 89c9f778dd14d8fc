"""Peak resident memory of `dedup import` on large sources (#25: import of 100,000 small files and
of a 2 GB parquet must stay under 2 GB resident).

Usage: python -m bench.memory [folder|parquet|all] [--files N] [--gb G]
Each case builds its source under bench/out/memory (once), imports it into a fresh work dir in a
child process and reads the child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``: the largest
child so far, so run one case per invocation, as `make bench` does).
The parquet is the hostile shape the issue measured: 10-row row groups.
"""

from __future__ import annotations

import io
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("bench/out/memory")


def _jpegs(n: int, size: tuple[int, int], quality: int = 90) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def build_folder(n: int) -> Path:
    root = OUT / f"folder_{n}"
    if (root / ".done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    pool = _jpegs(64, (32, 32))
    for i in range(n):
        sub = root / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.jpg").write_bytes(pool[i % len(pool)])
    (root / ".done").write_text("")
    return root


def build_parquet(gb: float) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = OUT / f"images_{gb:g}gb.parquet"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    pool = _jpegs(32, (192, 192), quality=100)  # ~100 KB each
    rows = int(gb * 1e9 / np.mean([len(p) for p in pool]))
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())]
    )
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, 10):  # 10-row row groups
            n = min(10, rows - start)
            images = [{"bytes": pool[(start + j) % len(pool)], "path": f"{start + j}.jpg"} for j in range(n)]
            writer.write_table(
                pa.table({"image": images, "text": [f"caption {start + j}" for j in range(n)]}, schema=schema)
            )
    tmp.rename(path)
    return path


def measure(source: Path, label: str) -> dict:
    work = OUT / f"work_{label}"
    shutil.rmtree(work, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "dedup", "import", str(source), str(work)], capture_output=True, text=True
    )
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    size = (
        sum(p.stat().st_size for p in Path(source).rglob("*"))
        if Path(source).is_dir()
        else Path(source).stat().st_size
    )
    row = {
        "case": label,
        "source_bytes": size,
        "peak_rss_mb": round(peak / 1024, 1),
        "seconds": round(seconds, 1),
        "output": r.stdout.strip().splitlines()[-1],
        "note": "" if peak > before else "peak not above an earlier child's",
    }
    shutil.rmtree(work, ignore_errors=True)
    return row


def main(argv: list[str]) -> None:
    which = argv[0] if argv and not argv[0].startswith("--") else "all"
    files = int(argv[argv.index("--files") + 1]) if "--files" in argv else 100_000
    gb = float(argv[argv.index("--gb") + 1]) if "--gb" in argv else 2.0
    rows = []
    if which in ("folder", "all"):
        rows.append(measure(build_folder(files), f"folder of {files:,} small files"))
    if which in ("parquet", "all"):
        rows.append(measure(build_parquet(gb), f"{gb:g} GB parquet, 10-row row groups"))
    print("| case | source | peak RSS | seconds | import said |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['source_bytes'] / 1e9:.2f} GB | {r['peak_rss_mb']:.0f} MB "
            f"| {r['seconds']} | {r['output']} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
