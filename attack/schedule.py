"""Noise schedules, the forward process and the epsilon-prediction loss (Ho et al. 2020; cosine
schedule of Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def betas(kind: str, steps: int = 1000) -> torch.Tensor:
    if kind == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
        alphas_bar = torch.cos(((x / steps) + s) / (1 + s) * math.pi / 2) ** 2
        alphas_bar = alphas_bar / alphas_bar[0]
        return (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {kind!r}: linear or cosine")


class Schedule:
    def __init__(self, kind: str = "linear", steps: int = 1000) -> None:
        self.kind = kind
        self.steps = steps
        b = betas(kind, steps)
        self.alphas_bar = torch.cumprod(1 - b, dim=0).float()

    def to(self, device: torch.device | str) -> Schedule:
        self.alphas_bar = self.alphas_bar.to(device)
        return self

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_bar[t][:, None, None, None]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loss(
        self,
        model: torch.nn.Module,
        x0: torch.Tensor,
        tokens: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t = torch.randint(0, self.steps, (len(x0),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t, tokens), noise)
