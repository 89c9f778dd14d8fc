"""A compact UNet for epsilon-prediction DDPMs, with optional caption conditioning.

Residual blocks with GroupNorm and a scale-shift from the conditioning vector (time embedding plus
caption embedding, as class conditioning is done in the improved-DDPM/ADM UNets), one self-attention
block at the lowest resolution, skip connections between mirrored levels. Captions are encoded by
:class:`CaptionEncoder`: hashed word tokens, a learned embedding each, averaged; an empty caption is
the "null" condition that classifier-free guidance samples against.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class UNetConfig:
    resolution: int = 16
    channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    blocks_per_level: int = 1
    attention: bool = True
    dropout: float = 0.0
    conditional: bool = True
    vocab: int = 8192
    max_tokens: int = 24

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize(captions: list[str | None], vocab: int, max_tokens: int) -> torch.Tensor:
    """Word ids in [1, vocab) (0 is padding), stable across runs and machines (crc32, not hash())."""
    out = torch.zeros(len(captions), max_tokens, dtype=torch.long)
    for i, caption in enumerate(captions):
        words = _WORD.findall((caption or "").lower())[:max_tokens]
        for j, w in enumerate(words):
            out[i, j] = 1 + zlib.crc32(w.encode()) % (vocab - 1)
    return out


class CaptionEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens > 0).float()
        count = mask.sum(dim=1, keepdim=True)
        mean = (self.embed(tokens) * mask[..., None]).sum(dim=1) / count.clamp(min=1)
        return torch.where(count > 0, mean, self.null.expand_as(mean))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if (ch % g == 0 and ch // g >= 2) or g == 1)
    return nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(dim=1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        emb = 4 * ch
        self.time = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.caption = CaptionEncoder(cfg.vocab, emb) if cfg.conditional else None
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        widths = [ch]
        cur = ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.blocks_per_level):
                self.down.append(ResBlock(cur, ch * mult, emb, cfg.dropout))
                cur = ch * mult
                widths.append(cur)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                widths.append(cur)
        self.mid1 = ResBlock(cur, cur, emb, cfg.dropout)
        self.mid_attn = Attention(cur) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(cur, cur, emb, cfg.dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(ResBlock(cur + widths.pop(), ch * mult, emb, cfg.dropout))
                cur = ch * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(_norm(cur), nn.SiLU(), nn.Conv2d(cur, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.cfg.channels))
        if self.caption is not None:
            if tokens is None:
                tokens = torch.zeros(len(x), 1, dtype=torch.long, device=x.device)
            emb = emb + self.caption(tokens)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(h)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
