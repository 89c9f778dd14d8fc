"""Which member of a duplicate group is kept: a stated policy, never "whichever came first" by accident.

Each policy orders a group best-first; ties always fall back to first-seen order, so results are
deterministic.

* ``resolution``: the largest original image (pixels), the copy least degraded by resizing.
* ``first``: the first seen (shard, then row order): stable across reruns and easy to reason about.
* ``centroid``: closest to the group's mean embedding, the most typical member.
* ``farthest``: farthest from the mean (SemDeDup's "hard" variant), keeping the most unusual member.
* ``caption``: the member whose caption is most typical of the group (its words appear in most of
  the other captions), so the kept caption says what the copies have in common (tie: resolution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

POLICIES = ("resolution", "first", "centroid", "farthest", "caption")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class RankContext:
    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    area: np.ndarray  # (n,) pixels of the original image
    seen: np.ndarray  # (n,) first-seen order
    captions: list[str | None]


def _words(caption: str | None) -> frozenset[str]:
    return frozenset(_WORD.findall((caption or "").lower()))


def caption_scores(captions: list[str | None]) -> np.ndarray:
    """How typical each caption is of the group: the mean, over its distinct words, of the share of
    the group's captions containing that word. Linear in the number of words, so large groups are cheap.
    """
    sets = [_words(c) for c in captions]
    df: dict[str, int] = {}
    for words in sets:
        for w in words:
            df[w] = df.get(w, 0) + 1
    n = max(len(sets), 1)
    return np.array([sum(df[w] for w in words) / (n * len(words)) if words else 0.0 for words in sets])


def rank(policy: str, members: np.ndarray, ctx: RankContext) -> np.ndarray:
    """``members`` (row indices) ordered best-first under ``policy``."""
    members = np.asarray(members)
    seen = ctx.seen[members]
    if policy == "first":
        keys: tuple[np.ndarray, ...] = (seen,)
    elif policy == "resolution":
        keys = (seen, -ctx.area[members])
    elif policy in ("centroid", "farthest"):
        x = ctx.embeddings[members]
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
