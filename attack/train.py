"""Training the reference DDPM: AdamW, warm-up then cosine decay, EMA weights, resumable checkpoints.

Checkpoints hold only tensors, numbers and strings, so they load with ``torch.load(weights_only=True)``.
Batches are drawn from a seeded torch generator: the before and after models see the same sequence
of random draws, differing only in the data (attack.md §4: same architecture, resolution, steps,
batch size and seed).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from attack.model import UNet, UNetConfig, parameter_count, tokenize
from attack.schedule import Schedule
from dedup.core.files import atomic_path


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    ema: float = 0.999
    seed: int = 0
    schedule: str = "linear"
    caption_dropout: float = 0.1  # classifier-free guidance needs unconditional steps too
    checkpoint_every: int = 500
    device: str = "auto"
    unet: UNetConfig = field(default_factory=UNetConfig)


def device_for(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) to float (n, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = {k: v for k, v in cfg.__dict__.items() if k != "unet"}
    d["unet"] = cfg.unet.to_dict()
    return d


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint from ``dedup attack train``; anything else is a one-line error naming the file."""
    from dedup.core.errors import UserError

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a checkpoint from `dedup attack train` ({msg[:160]})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "unet" not in ckpt.get("config", {}):
        raise UserError(f"{path}: not a checkpoint from `dedup attack train` (no model config in it)")
    return ckpt


def load_model(path: Path, device: torch.device | str = "cpu", ema: bool = True) -> tuple[UNet, dict]:
    ckpt = load_checkpoint(path, device)
    model = UNet(UNetConfig(**ckpt["config"]["unet"])).to(device)
    model.load_state_dict(ckpt["ema" if ema else "model"])
    model.eval()
    return model, ckpt


def train(
    images: np.ndarray,
    captions: list[str],
    cfg: TrainConfig,
    out: Path,
    progress: bool = True,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a DDPM on ``images``; writes ``out`` (the checkpoint) and returns its summary.
    ``evaluate`` measures the EMA model at every checkpoint: the checkpoint's ``curve`` (quality against
    training steps, kept across a resume)."""
    device = device_for(cfg.device)
    torch.manual_seed(cfg.seed)
    model = UNet(cfg.unet).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start, seconds, losses, curve = 0, 0.0, [], []
    digest = data_digest(images, captions)
    if out.exists():
        ckpt = load_checkpoint(out, device)
        if ckpt["config"] == _config_dict(cfg) and ckpt.get("data") == digest:
            if ckpt["step"] >= cfg.steps:
                return summary(ckpt)
            start, seconds, losses, curve = _resume(ckpt, model, ema, opt, gen)
    x = to_tensor(images).to(device)
    tokens = tokenize(captions, cfg.unet.vocab, cfg.unet.max_tokens).to(device)
    schedule = Schedule(cfg.schedule).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.train()
    began = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(0, len(x), (cfg.batch_size,), device=device, generator=gen)
        batch_tokens = None
        if cfg.unet.conditional:
            batch_tokens = tokens[idx]
            drop = torch.rand(len(idx), device=device, generator=gen) < cfg.caption_dropout
            batch_tokens = batch_tokens.masked_fill(drop[:, None], 0)
        with amp:
            loss = schedule.loss(model, x[idx], batch_tokens, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            curve.append(_curve_point(done, losses[-cfg.checkpoint_every :], ema, evaluate))
            elapsed = seconds + time.time() - began
            _save(out, model, ema, opt, gen, cfg, done, elapsed, losses, curve, len(x), digest)
    return summary(load_checkpoint(out))


def _curve_point(step: int, recent: list[float], ema: torch.nn.Module, evaluate) -> dict[str, Any]:
    """One point of the checkpoint's curve: the step, the mean training loss since the last
    checkpoint, and what ``evaluate`` measures on the EMA model."""
    point = {"step": step, "train_loss": round(float(np.mean(recent)), 5)}
    return point | (evaluate(ema) if evaluate is not None else {})


def _resume(ckpt: dict[str, Any], model, ema, opt, gen) -> tuple[int, float, list[float], list[dict]]:
    """Load a checkpoint's weights, optimizer and generator state; return where training stood."""
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["generator"].to(gen.get_state().device))
    return ckpt["step"], ckpt["seconds"], list(ckpt["losses"]), list(ckpt.get("curve", []))


def data_digest(images: np.ndarray, captions: list[str]) -> str:
    """What the model was trained on: a checkpoint only resumes on the same images and captions."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update("\n".join(captions).encode())
    return h.hexdigest()[:16]


def _save(out, model, ema, opt, gen, cfg, step, seconds, losses, curve, n_images, digest) -> None:
    state = {
        "config": _config_dict(cfg),
        "data": digest,
        "step": step,
        "seconds": seconds,
        "losses": [float(v) for v in losses],
        "curve": curve,
        "images": n_images,
        "parameters": parameter_count(model),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state().cpu(),
    }
    with atomic_path(out) as tmp:
        torch.save(state, tmp)


def summary(ckpt: dict[str, Any]) -> dict[str, Any]:
    losses = ckpt["losses"]
    return {
        "steps": ckpt["step"],
        "seconds": round(float(ckpt["seconds"]), 1),
        "images": ckpt["images"],
        "parameters": ckpt["parameters"],
        "final_loss": round(float(np.mean(losses[-100:])), 5) if losses else None,
        "config": ckpt["config"],
        "curve": ckpt.get("curve", []),
    }
