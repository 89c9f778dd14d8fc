"""DDIM sampling (Song et al. 2021, eta = 0) with classifier-free guidance.

Deterministic given the seed: the same model, prompts and seed give the same images, which is what
lets the before and after models be sampled "the same way" (attack.md §4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attack.model import UNet, tokenize
from attack.schedule import Schedule
from attack.train import device_for, load_model


@torch.no_grad()
def ddim(
    model: UNet,
    n: int,
    captions: list[str] | None,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    batch_size: int = 256,
    schedule: str = "linear",
    progress: bool = False,
) -> np.ndarray:
    """``n`` images as uint8 (n, H, W, 3). ``captions`` (one per image) condition a conditional model;
    guidance g mixes eps = eps(null) + g * (eps(caption) - eps(null))."""
    device = next(model.parameters()).device
    res = model.cfg.resolution
    sched = Schedule(schedule).to(device)
    ts = torch.linspace(sched.steps - 1, 0, steps, device=device).round().long()
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn((n, 3, res, res), generator=gen, device=device)
    conditional = model.cfg.conditional and captions is not None
    tokens = tokenize(captions, model.cfg.vocab, model.cfg.max_tokens).to(device) if conditional else None
    out = []
    for lo in tqdm(range(0, n, batch_size), desc="sample", disable=not progress):
        x = noise[lo : lo + batch_size]
        tok = tokens[lo : lo + batch_size] if tokens is not None else None
        for i, t in enumerate(ts):
            tt = t.expand(len(x))
            if tok is not None and guidance != 1.0:
                both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([tok, torch.zeros_like(tok)]))
                cond, uncond = both.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            else:
                eps = model(x, tt, tok)
            a = sched.alphas_bar[t]
            a_prev = sched.alphas_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, res, res, 3), np.uint8)


def sample_to_file(
    checkpoint: Path,
    out: Path,
    n: int,
    captions: list[str] | None = None,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Sample a checkpoint into an ``.npz`` of generations: images (n, H, W, 3) uint8 and prompts."""
    from dedup.core.files import atomic_path

    model, ckpt = load_model(checkpoint, device_for(device))
    prompts = [captions[i % len(captions)] for i in range(n)] if captions else None
    images = ddim(
        model, n, prompts, steps, guidance, seed, schedule=ckpt["config"]["schedule"], progress=progress
    )
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=images,
            prompts=np.array(prompts or [""] * n, dtype=str),  # a plain string array: no pickle
            seed=seed,
            steps=steps,
            guidance=guidance,
        )
    return out


def load_generations(path: Path) -> tuple[np.ndarray, list[str]]:
    """Images (n, H, W, 3) uint8 and prompts from a generations ``.npz``, read without unpickling:
    a user-supplied file must never run code (a pickled object array is refused)."""
    from dedup.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such generations file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise UserError(f"{path}: no 'images' array (expected images and prompts)")
            images = f["images"]
            prompts = [str(p) for p in f["prompts"]] if "prompts" in f.files else [""] * len(images)
    except UserError:
        raise
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise UserError(
                f"{path}: holds pickled objects, which are never loaded; store prompts as a string array"
            ) from None
        raise UserError(f"{path}: not a generations file ({str(err).splitlines()[0]})") from None
    except Exception as err:
        raise UserError(
            f"{path}: not a generations .npz ({str(err).splitlines()[0] or type(err).__name__})"
        ) from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{path}: 'images' must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
    if len(prompts) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(prompts)} prompts")
    return images, prompts
