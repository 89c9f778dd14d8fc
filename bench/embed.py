"""Embed throughput: decode alone, model forward alone (synthetic tensors) and the whole stage, on the
same images, for open_clip ViT-B-32 and the smallest ViT in its registry. Random-init weights (no hub
here): speed does not depend on the weights. The goal is whole-stage / forward-only >= 0.9 (decoding
hidden behind the model). Usage: python -m bench.embed [N_IMAGES]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dedup.core.config import EmbedConfig
from dedup.core.layout import WorkDir

MODELS = ("ViT-B-32", "ViT-S-32-alt")


def make_workdir(root: Path, n: int) -> WorkDir:
    """n real photographs (demo tiles, re-encoded at 256 px) in two img2dataset-style shards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import encode, write_download_shard

    from dedup.core.config import DemoConfig
    from dedup.demo_bases import make_bases

    bases = make_bases(DemoConfig(distinct=n))
    work = WorkDir(root)
    half = n // 2
    for shard, part in enumerate((bases[:half], bases[half:])):
        items = [
            (f"{shard:05d}{i:04d}", encode(b.image.resize((256, 256)), quality=90), b.caption, "jpg")
            for i, b in enumerate(part)
        ]
        write_download_shard(work, shard, items)
    return work


def decode_only(work: WorkDir) -> float:
    from dedup.core.shards import iter_samples
    from dedup.embed.samples import prepare_sample

    t = time.time()
    n = 0
    for shard in work.download_shards():
        for s in iter_samples(work.download_tar(shard)):
            prepare_sample(s, None)
            n += 1
    return n / (time.time() - t)


def forward_only(model: str, ckpt: str, n: int, batch: int) -> float:
    from dedup.embed.embedders import ClipEmbedder

    emb = ClipEmbedder(model, ckpt, "auto", "auto")
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    emb.embed(x)  # warm-up
    t = time.time()
    done = 0
    while done < n:
        emb.embed(x)
        done += batch
    return done / (time.time() - t)


def whole_stage(work: WorkDir, model: str, ckpt: str, batch: int) -> tuple[float, str]:
    from dedup.embed.stage import run_embed

    shutil.rmtree(work.embed_dir, ignore_errors=True)
    shutil.rmtree(work.manifest_dir, ignore_errors=True)
    s = run_embed(
        EmbedConfig(model=model, pretrained=ckpt, batch_size=batch, workers=2), work, progress=False
    )
    return s["images_per_second"], f"{s['device']} {s['precision']}"


def main(argv: list[str]) -> None:
    import open_clip
    import torch

    n = int(argv[0]) if argv else 256
    batch = 32
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = make_workdir(Path(tmp) / "w", n)
        dec = decode_only(work)
        for model in MODELS:
            ckpt = str(Path(tmp) / f"{model}.pt")
            torch.save(open_clip.create_model(model).state_dict(), ckpt)
            fwd = forward_only(model, ckpt, n, batch)
            whole, device = whole_stage(work, model, ckpt, batch)
            rows.append((model, device, dec, fwd, whole))
            print(rows[-1], flush=True)
    print(f"\n{n} images (256 px JPEG), batch {batch}, 2 decode threads\n")
    print("| model | device | decode img/s | forward img/s | whole stage img/s | whole / forward |")
    print("|---|---|---|---|---|---|")
    for model, device, dec, fwd, whole in rows:
        print(f"| {model} | {device} | {dec:.0f} | {fwd:.1f} | {whole:.1f} | {whole / fwd:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
