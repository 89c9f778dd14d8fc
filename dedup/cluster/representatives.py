"""Which member of a duplicate group is kept: a stated policy, never "whichever came first" by accident.

Each policy orders a group best-first; ties always fall back to first-seen order, so results are
deterministic.

* ``resolution``: the largest original image (pixels), the copy least degraded by resizing.
* ``first``: the first seen, in key order (img2dataset's keys follow the URL list): stable across
  reruns and easy to reason about.
* ``centroid``: closest to the group's mean embedding, the most typical member.
* ``farthest``: farthest from the mean (SemDeDup's "hard" variant), keeping the most unusual member.
* ``caption``: the member whose caption overlaps most with the others' captions (mean word Jaccard),
  so the kept caption says what the copies have in common (tie: resolution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

import numpy as np

from dedup.core.config import RepresentativePolicy

POLICIES = get_args(RepresentativePolicy)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class RankContext:
    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    area: np.ndarray  # (n,) pixels of the original image
    seen: np.ndarray  # (n,) first-seen order
    captions: list[str | None]


def _words(caption: str | None) -> frozenset[str]:
    return frozenset(_WORD.findall((caption or "").lower()))


def caption_scores(captions: list[str | None], sample: int = 256) -> np.ndarray:
    """Mean word-set Jaccard similarity of each caption to the group's other captions.

    The caption that overlaps most with the rest says what the copies have in common: neither a
    decorated variant ("... | stock photo") nor a fragment ("barn"). Large groups are compared with
    a fixed sample of ``sample`` members, so the cost stays linear.
    """
    from scipy.sparse import csr_matrix

    sets = [_words(c) for c in captions]
    n = len(sets)
    if n < 2:
        return np.zeros(n)
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, words in enumerate(sets):
        for w in words:
            rows.append(r)
            cols.append(vocab.setdefault(w, len(vocab)))
    m = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, max(len(vocab), 1)))
    others = np.arange(n) if n <= sample else np.linspace(0, n - 1, sample).astype(int)
    inter = (m @ m[others].T).toarray()
    size = np.array([len(x) for x in sets], dtype=float)
    union = size[:, None] + size[others][None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    jac[others, np.arange(len(others))] = 0.0  # not against itself
    count = len(others) - np.isin(np.arange(n), others)
    return jac.sum(axis=1) / np.maximum(count, 1)


def rank(policy: str, members: np.ndarray, ctx: RankContext) -> np.ndarray:
    """``members`` (row indices) ordered best-first under ``policy``."""
    members = np.asarray(members)
    seen = ctx.seen[members]
    if policy == "first":
        keys: tuple[np.ndarray, ...] = (seen,)
    elif policy == "resolution":
        keys = (seen, -ctx.area[members])
    elif policy in ("centroid", "farthest"):
        x = np.asarray(ctx.embeddings[members], dtype=np.float32)
        centre = x.mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        cos = x @ centre
        keys = (seen, -cos if policy == "centroid" else cos)
    elif policy == "caption":
        scores = caption_scores([ctx.captions[m] for m in members])
        keys = (seen, -ctx.area[members], -np.round(scores, 9))
    else:
        raise ValueError(f"unknown representative policy {policy!r}; choose from {', '.join(POLICIES)}")
    return members[np.lexsort(keys)]
