"""GPU check, for the day a device is lent (``bash bench/device.sh``): the CUDA paths measured in one
bounded run, nothing from the network.

1. open_clip ViT-B-32 embed throughput with decoding in the loop (JPEG bytes -> PIL -> preprocess ->
   the image tower under autocast), batch 256. Without a local checkpoint (``DEDUP_CLIP_CHECKPOINT``)
   the weights are random: the speed is the same, the vectors mean nothing (said in the table).
2. FAISS on the GPU at 10^6 vectors of 512 dimensions: exact (``GpuIndexFlatIP``) and IVF
   (``GpuIndexIVFFlat``, nlist 2,000, nprobe 8) k = 32 search of 10^4 queries (needs faiss-gpu; with
   faiss-cpu the row says so).
3. The attack's ``--budget gpu`` model: training steps a second at its batch size (bf16 autocast).

Each part is bounded (a time limit per part) and reports what failed instead of stopping the run.
On a machine without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable

import numpy as np

LIMIT_S = 150.0  # each part stops measuring after this long


def _clip_embed() -> str:
    import open_clip
    import torch
    from PIL import Image

    checkpoint = os.environ.get("DEDUP_CLIP_CHECKPOINT")
    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=checkpoint if checkpoint else None, device="cuda"
    )
    model.eval()
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(256):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    done, started = 0, time.time()
    while time.time() - started < min(LIMIT_S, 60):
        batch = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]).to("cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            model.encode_image(batch)
        torch.cuda.synchronize()
        done += len(blobs)
    weights = f"checkpoint {checkpoint}" if checkpoint else "random weights (same speed, meaningless vectors)"
    rate = done / (time.time() - started)
    return f"{rate:,.0f} images/s (decode + preprocess on 1 CPU thread, fp16 tower; {weights})"


def _faiss_gpu() -> str:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return "skipped: this faiss has no GPU support (pip install faiss-gpu)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1_000_000, 512), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:10_000]
    res = faiss.StandardGpuResources()
    out = []
    flat = faiss.GpuIndexFlatIP(res, 512)
    flat.add(x)
    t = time.time()
    flat.search(q, 32)
    out.append(f"exact {len(q) / (time.time() - t):,.0f} queries/s")
    quantizer = faiss.IndexFlatIP(512)
    ivf = faiss.index_cpu_to_gpu(res, 0, faiss.IndexIVFFlat(quantizer, 512, 2000, faiss.METRIC_INNER_PRODUCT))
    t = time.time()
    ivf.train(x[:200_000])
    ivf.add(x)
    built = time.time() - t
    ivf.nprobe = 8
    t = time.time()
    ivf.search(q, 32)
    out.append(f"IVF {len(q) / (time.time() - t):,.0f} queries/s (built in {built:.1f} s)")
    return "; ".join(out) + " at 10^6 x 512"


def _attack_steps() -> str:
    import torch

    from attack.compare import train_config
    from attack.config import AttackConfig, resolve_attack
    from attack.model import UNet
    from attack.schedule import Schedule

    cfg = train_config(resolve_attack(AttackConfig(budget="gpu")))
    model = UNet(cfg.unet).to("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    schedule = Schedule(cfg.schedule).to("cuda")
    r = cfg.unet.resolution
    x = torch.randn(cfg.batch_size, 3, r, r, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    steps, started = 0, time.time()
    while time.time() - started < min(LIMIT_S, 60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = schedule.loss(model, x, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    torch.cuda.synchronize()
    rate = steps / (time.time() - started)
    whole = cfg.steps / rate / 60
    return f"{rate:.1f} steps/s at batch {cfg.batch_size}, {r}x{r} ({cfg.steps:,} steps: {whole:.0f} min)"


PARTS: list[tuple[str, Callable[[], str]]] = [
    ("open_clip ViT-B-32 embed", _clip_embed),
    ("FAISS GPU search", _faiss_gpu),
    ("attack --budget gpu training", _attack_steps),
]


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench/device.sh: no GPU here (torch.cuda.is_available() is False): nothing to measure")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| part | result |\n|---|---|")
    for name, part in PARTS:
        try:
            result = part()
        except Exception as err:  # a part's failure is a row of the table, not the end of the run
            result = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        print(f"| {name} | {result} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
