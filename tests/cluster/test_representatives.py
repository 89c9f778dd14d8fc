"""The representative policies, against brute-force definitions (each policy's order, the caption
score's exact values, its sampled path for large groups, its edge cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dedup.cluster.representatives import POLICIES, RankContext, caption_scores, rank


def _jaccard(a: str | None, b: str | None) -> float:
    import re

    wa = set(re.findall(r"[a-z0-9]+", (a or "").lower()))
    wb = set(re.findall(r"[a-z0-9]+", (b or "").lower()))
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def _brute(captions: list[str | None], others: list[int]) -> np.ndarray:
    out = []
    for i, c in enumerate(captions):
        sims = [_jaccard(c, captions[j]) for j in others if j != i]
        out.append(sum(sims) / max(len(sims), 1))
    return np.array(out)


CAPTIONS = ["A red barn", "red barn", "a red barn, photo", "Blue lake at dawn", None, "barn | stock photo 2"]


def test_caption_scores_are_the_mean_jaccard_to_the_others():
    got = caption_scores(CAPTIONS)
    assert np.allclose(got, _brute(CAPTIONS, list(range(len(CAPTIONS)))), atol=1e-12)
    assert got[4] == 0.0 and got.argmax() == 0


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_caption_scores_of_tiny_groups(n):
    caps = CAPTIONS[:n]
    got = caption_scores(caps)
    assert got.shape == (n,)
    assert np.allclose(got, _brute(caps, list(range(n))) if n >= 2 else np.zeros(n))


def test_empty_captions_share_nothing():
    assert np.array_equal(caption_scores([None, None, "", "a b"]), np.zeros(4))


@pytest.mark.parametrize(("n", "sample"), [(7, 3), (7, 7), (9, 4), (5, 8)])
def test_large_groups_are_scored_against_a_fixed_sample(n, sample):
    rng = np.random.default_rng(n * 10 + sample)
    words = ["barn", "red", "lake", "photo", "stock", "blue", "a", "of"]
    caps = [" ".join(rng.choice(words, size=rng.integers(1, 5))) for _ in range(n)]
    others = list(range(n)) if n <= sample else np.linspace(0, n - 1, sample).astype(int).tolist()
    assert np.allclose(caption_scores(caps, sample=sample), _brute(caps, others), atol=1e-12)


def _ctx() -> RankContext:
    x = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    return RankContext(
        embeddings=x,
        area=np.array([300, 100, 300, 200]),
        seen=np.array([2, 0, 3, 1]),
        captions=["red barn", "a red barn", "barn", "red barn at noon"],
    )


def test_each_policy_orders_by_its_rule_then_first_seen():
    ctx = _ctx()
    members = np.arange(4)
    assert list(rank("first", members, ctx)) == [1, 3, 0, 2]
    assert list(rank("resolution", members, ctx)) == [0, 2, 3, 1]  # area 300 tie: seen 2 before 3
    centre = ctx.embeddings.mean(axis=0)
    cos = ctx.embeddings @ (centre / np.linalg.norm(centre))
    assert list(rank("centroid", members, ctx)) == sorted(range(4), key=lambda i: (-cos[i], ctx.seen[i]))
    assert list(rank("farthest", members, ctx)) == sorted(range(4), key=lambda i: (cos[i], ctx.seen[i]))
    scores = _brute(ctx.captions, list(range(4)))
    want = sorted(range(4), key=lambda i: (-round(scores[i], 9), -ctx.area[i], ctx.seen[i]))
    assert list(rank("caption", members, ctx)) == want


def test_rank_keeps_to_the_members_given_and_refuses_an_unknown_policy():
    ctx = _ctx()
    for policy, members in itertools.product(POLICIES, ([3, 1], [2])):
        got = rank(policy, np.array(members), ctx)
        assert sorted(got.tolist()) == sorted(members)
    with pytest.raises(ValueError, match="unknown representative policy"):
        rank("largest", np.arange(2), ctx)


def test_one_word_captions_that_agree_score_one_with_each_other():
    assert np.allclose(caption_scores(["barn", "barn", "lake"]), [0.5, 0.5, 0.0])


def test_groups_larger_than_the_default_sample_use_256_members():
    rng = np.random.default_rng(3)
    words = ["barn", "red", "lake", "photo", "stock", "blue"]
    caps = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(300)]
    others = np.linspace(0, 299, 256).astype(int).tolist()
    assert np.allclose(caption_scores(caps), _brute(caps, others), atol=1e-12)
