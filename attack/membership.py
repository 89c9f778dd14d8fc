"""Loss-based membership inference (attack.md §5, *beyond the paper*; Carlini et al. §5.2).

A model's denoising loss at a fixed timestep is lower on images it trained on, the more so the more
copies it saw. The score of an image is minus its mean loss at t = 100 (of 1000) over several noise
draws, with its caption; members should score higher than held-out images from the same corpus. It
is a weak baseline next to LiRA (which needs many shadow models), but far more sensitive than hard
extraction counts at a small budget: it can show an effect of deduplication where no image is
extracted.

Reported per duplicate bucket: AUC (the chance a member outscores a non-member) and the true-positive
rate at 1 % false positives (the threshold taken from the non-members' scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attack.model import tokenize
from attack.schedule import Schedule
from attack.train import device_for, load_model, to_tensor

T = 100  # attack.md §5: timestep 100 of 1000
DRAWS = 8  # noise draws per image (setting): the mean loss over them is the score
FPR = 0.01


def loss_scores(
    checkpoint: Path,
    images: np.ndarray,
    captions: list[str],
    t: int = T,
    draws: int = DRAWS,
    seed: int = 0,
    device: str = "auto",
    batch: int = 256,
) -> np.ndarray:
    """Minus the mean epsilon-prediction loss of each image at timestep ``t`` (higher: more member-like).

    The noise is drawn from ``seed`` per image position, so two models are scored on the same noise.
    """
    dev = device_for(device)
    model, ckpt = load_model(checkpoint, dev)
    schedule = Schedule(ckpt["config"].get("schedule", "linear")).to(dev)
    return -denoising_loss(model, schedule, images, captions, t, draws, seed, dev, batch)


@torch.no_grad()
def denoising_loss(
    model: torch.nn.Module,
    schedule: Schedule,
    images: np.ndarray,
    captions: list[str],
    t: int,
    draws: int,
    seed: int,
    device: torch.device,
    batch: int = 256,
) -> np.ndarray:
    """Per image, the mean epsilon-prediction loss at timestep ``t`` (on the paper's 1000-step scale)
    over ``draws`` noise draws from ``seed``: membership's score and the held-out quality measure."""
    cfg = model.cfg
    scale = schedule.steps / 1000  # t is given on the 1000-step scale of the paper
    step = torch.full((1,), round(t * scale), dtype=torch.long, device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = np.zeros(len(images), dtype=np.float64)
    for lo in range(0, len(images), batch):
        x0 = to_tensor(images[lo : lo + batch]).to(device)
        tokens = (
            tokenize(captions[lo : lo + batch], cfg.vocab, cfg.max_tokens).to(device)
            if cfg.conditional
            else None
        )
        total = torch.zeros(len(x0), dtype=torch.float64, device=device)
        for _ in range(draws):
            noise = torch.randn(x0.shape, generator=gen).to(device)
            ts = step.expand(len(x0))
            pred = model(schedule.q_sample(x0, ts, noise), ts, tokens)
            total += ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3)).double()
        out[lo : lo + len(x0)] = (total / draws).cpu().numpy()
    return out


def auc(members: np.ndarray, non_members: np.ndarray) -> float | None:
    """P(member score > non-member score), ties counted half (the Mann-Whitney statistic)."""
    m, n = np.asarray(members, float), np.asarray(non_members, float)
    if not len(m) or not len(n):
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([m, n]))  # ties share their average rank
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float = FPR) -> float | None:
    """Share of members scoring above the threshold that at most ``fpr`` of non-members exceed."""
    m, n = np.asarray(members, float), np.asarray(non_members, float)
    if not len(m) or not len(n):
        return None
    allowed = int(np.floor(fpr * len(n)))  # non-members allowed above the threshold
    threshold = np.sort(n)[::-1][allowed] if allowed < len(n) else -np.inf
    return float((m > threshold).mean())


def roc(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every threshold, for the report's ROC curve."""
    m, n = np.asarray(members, float), np.asarray(non_members, float)
    thresholds = np.unique(np.concatenate([m, n]))[::-1]
    fpr = np.array([0.0, *[(n >= t).mean() for t in thresholds]])
    tpr = np.array([0.0, *[(m >= t).mean() for t in thresholds]])
    return fpr, tpr
