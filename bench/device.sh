#!/usr/bin/env bash
# The GPU check (bench/device.py): open_clip embed throughput, FAISS GPU search at 10^6, the attack's
# --budget gpu step rate, in at most 10 minutes, offline. On a CPU-only machine: one line, exit 0.
# Run it when a device is lent (DEVELOPERS.md) and copy its table into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 600 "$PY" -m bench.device
