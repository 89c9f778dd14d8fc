"""`make bench` / `python -m bench [NAME ...]`: run the benchmarks (all by default) and print tables.

Names: quality, copydetect, cluster, write, embed, attack (peers: `make bench-quality`; time against
N, hours: `make bench-scaling`). Each
module's docstring says what it measures; bench/RESULTS.md keeps the numbers with the machine they
were measured on.
"""

from __future__ import annotations

import importlib
import sys

ALL = ("quality", "copydetect", "cluster", "write", "embed", "attack")


def main(argv: list[str]) -> None:
    for name in argv or ALL:
        if name not in ALL:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(ALL)}")
        print(f"\n## {name}\n", flush=True)
        importlib.import_module(f"bench.{name}").main([])


main(sys.argv[1:])
