"""Shared fixtures: real images, a real HTTP server on 127.0.0.1, the CLI as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random image with structure at several scales (not white noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3))
    for scale in (4, 8, 16):
        small = rng.random((max(1, h // scale), max(1, w // scale), 3))
        out += np.asarray(Image.fromarray((small * 255).astype("uint8")).resize((w, h), Image.BICUBIC)) / 3
    return Image.fromarray(np.clip(out, 0, 255).astype("uint8"))


def encode(im: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dedup", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )


@pytest.fixture
def cli():
    return run_cli
