"""The attack stage's settings, owned here: dedup's pipeline config finds this section by entry point
(``dedup.sections``), so ``dedup`` never imports ``attack``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dedup.core.config import Section
from dedup.core.errors import UserError

# The controlled experiment's arms (attack/experiment.py says what each trains on), named here, where
# importing them costs nothing, so the CLI's option and the experiment read the same tuple.
ARMS = ("before", "after", "after_equal_passes", "random_removal", "bucket_matched_removal")


class AttackConfig(Section):
    """Before/after training of a reference DDPM and the extraction test (../shared/docs/attack.md).

    ``budget`` picks a preset (``demo``: ~15 minutes on 2 CPU cores; ``gpu``: larger images, model and
    run); any field set explicitly in the YAML or on the command line overrides the preset.
    """

    budget: Literal["demo", "gpu"] = "demo"
    resolution: int = Field(16, ge=8)
    channels: int = Field(24, gt=0)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2])
    attention: bool = True
    steps: int = Field(1200, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup: int = Field(100, ge=0)
    ema: float = Field(0.999, gt=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    seed: int = 0
    conditional: bool = True
    caption_dropout: float = Field(0.1, ge=0, le=1)
    guidance: float = Field(3.0, ge=0)
    samples: int = Field(1700, gt=0)
    duplicated_prompt_repeats: int = Field(
        8, ge=1, description="prompts per caption of a duplicated group (singletons get one); attack.md §3.1"
    )
    sample_steps: int = Field(15, gt=0)
    max_distinct: int | None = Field(
        None, gt=1, description="train on at most this many near-duplicate groups (all duplicated ones kept)"
    )
    calibrated_threshold: float = Field(1 / 3, gt=0, description="attack.md §1 (setting): default 1/3")
    device: Literal["auto", "cpu", "cuda"] = "auto"


ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "demo": {
        # Measured on the 2-core machine (bench/RESULTS.md, "Attack"): a 1.4M-parameter UNet at
        # ~0.31 s per step and ~45 ms per 15-step DDIM sample, so two models of 1200 steps and 1,700
        # generations each (600 reference captions: 446 singletons once, 154 duplicated ones 8 times)
        # take about 15 minutes together.
        "resolution": 16,
        "channels": 24,
        "channel_mults": [1, 2, 2],
        "steps": 1200,
        "batch_size": 64,
        "lr": 2e-3,
        "samples": 1700,
        "sample_steps": 15,
        "max_distinct": 600,
    },
    "gpu": {
        "resolution": 32,
        "channels": 64,
        "channel_mults": [1, 2, 2, 2],
        "steps": 30000,
        "batch_size": 128,
        "lr": 2e-4,
        "samples": 10000,
        "sample_steps": 50,
        "max_distinct": None,
    },
}


def resolve_attack(cfg: AttackConfig) -> AttackConfig:
    """The budget preset, with every field the user set explicitly on top."""
    explicit = {k: getattr(cfg, k) for k in cfg.model_fields_set if k != "budget"}
    out = AttackConfig.model_validate({"budget": cfg.budget, **ATTACK_BUDGETS[cfg.budget], **explicit})
    halvings = len(out.channel_mults) - 1
    if out.resolution % (2**halvings):
        raise UserError(
            f"attack resolution {out.resolution}: must be a multiple of {2**halvings} "
            f"(the UNet halves it {halvings} times; channel_mults {out.channel_mults})"
        )
    return out
