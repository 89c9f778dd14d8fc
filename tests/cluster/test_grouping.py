"""Chaining policies and representative policies on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.cluster.grouping import components, group
from dedup.cluster.oracle import PairOracle
from dedup.cluster.representatives import RankContext, caption_scores, rank


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chain():
    """A ~ B and B ~ C at cosine 0.98, but A and C only 0.92 (threshold 0.97)."""
    a = np.array([1.0, 0.0, 0.0])
    theta = np.arccos(0.98)
    b = np.array([np.cos(theta), np.sin(theta), 0.0])
    c = np.array([np.cos(2 * theta), np.sin(2 * theta), 0.0])
    return _unit([a, b, c])


def oracle(x, threshold=0.97):
    n = len(x)
    return PairOracle(
        embeddings=x,
        sha=np.arange(n),
        phash=np.arange(n, dtype=np.uint64) * np.uint64(0xFFFF),
        phash_mirror=None,
        embedding_threshold=threshold,
        phash_threshold=None,
    )


def ctx(x, area=None, captions=None):
    n = len(x)
    return RankContext(
        x, np.asarray(area if area is not None else np.ones(n)), np.arange(n), captions or [None] * n
    )


EDGES = (np.array([0, 1]), np.array([1, 2]))


def test_chain_under_components_is_one_group():
    x = chain()
    g = group(EDGES, 3, "components", oracle(x), ctx(x, area=[3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 0]
    assert g.signal[2] == "chain"  # C is in A's group only through B


def _fan(angles):
    return _unit([[np.cos(t), np.sin(t)] for t in angles])


def _verified(verdicts, n, derived="keep"):
    """An oracle whose verifier calls the listed pairs as given and every other pair distinct; every
    pair is close enough to be looked at."""
    from dedup.cluster.copydetect import Evidence

    x = _unit([[1, 0.01 * t] for t in range(n)])
    o = oracle(x, threshold=None)
    o.candidate_threshold = 0.0
    o.derived = derived
    o.examine = lambda a, b, **_: Evidence(verdict=verdicts.get((min(a, b), max(a, b)), "distinct"))
    return o, x


def test_chain_under_representative_splits_at_the_kept_image():
    x = chain()
    g = group(EDGES, 3, "representative", oracle(x), ctx(x, area=[3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 2]  # A keeps B; C is not a duplicate of A
    # With B kept (the middle of the chain), both A and C are its direct duplicates.
    g = group(EDGES, 3, "representative", oracle(x), ctx(x, area=[2, 3, 1]), "resolution")
    assert g.representative.tolist() == [1, 1, 1]
    assert np.allclose(g.similarity[[0, 2]], 0.98, atol=1e-4)


def test_representative_gives_way_to_a_verified_copy_that_covers_all_it_covers_and_more():
    """0 is ranked first (an upscaled crop under `resolution`) and 1 (its original) is a verified copy
    of it; 1 also covers 2 (another crop), which 0 does not contain: 1 is kept and 0 and 2 go."""
    edges = (np.array([0, 1]), np.array([1, 2]))
    o, x = _verified({(0, 1): "copy", (1, 2): "copy"}, 3)
    g = group(edges, 3, "representative", o, ctx(x, area=[3, 2, 1]), "resolution")
    assert g.representative.tolist() == [1, 1, 1]
    assert g.signal.tolist() == ["verified", "self", "verified"]
    # 1 covers 2 but not 3, which 0 covers: not a superset, so the policy's choice stands
    edges = (np.array([0, 1, 0]), np.array([1, 2, 3]))
    o, x = _verified({(0, 1): "copy", (1, 2): "copy", (0, 3): "copy"}, 4)
    g = group(edges, 4, "representative", o, ctx(x, area=[4, 3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 2, 0]


def test_only_a_copy_of_the_kept_image_may_take_its_place():
    """Under `derived: remove` 1 is removed as derived of 0, but a derived image (an element added,
    recoloured) is not the same picture: it does not replace 0 however much it covers."""
    edges = (np.array([0, 1]), np.array([1, 2]))
    o, x = _verified({(0, 1): "derived", (1, 2): "copy"}, 3, derived="remove")
    g = group(edges, 3, "representative", o, ctx(x, area=[3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 2]


def test_chain_under_semdedup_drops_each_duplicate_of_a_higher_ranked_item():
    x = chain()
    g = group(EDGES, 3, "semdedup", oracle(x), ctx(x, area=[3, 2, 1]), "resolution")
    # B duplicates A (dropped, joins A); C duplicates B, ranked above it (dropped, joins B's group: A).
    assert g.representative.tolist() == [0, 0, 0]
    assert g.signal.tolist() == ["self", "embedding", "embedding"]


def test_oracle_signals_in_order_of_certainty():
    x = _unit([[1, 0], [1, 0.01], [0, 1]])
    o = PairOracle(
        embeddings=x,
        sha=np.array([0, 0, 1]),
        phash=np.array([0, 0, 7], dtype=np.uint64),
        phash_mirror=None,
        embedding_threshold=0.97,
        phash_threshold=2,
    )
    dup, sig, _ = o.decide(0, np.array([1, 2]))
    assert dup.tolist() == [True, False] and sig[0] == "exact"


def _evidence(verdict):
    from dedup.cluster.copydetect import Evidence

    return Evidence(verdict=verdict)


def test_oracle_verifies_proposed_and_band_pairs_and_caches():
    # cos(0,1) = 0.8 (band), cos(0,2) = 0 (below the band), cos(0,3) ~ 1 (proposed by the embedding)
    x = _unit([[1, 0], [0.8, 0.6], [0, 1], [1, 0.001]])
    asked = []

    def examine(a, b, **_):
        asked.append((a, b))
        return _evidence("copy" if (a, b) == (0, 1) else "distinct")

    o = PairOracle(
        embeddings=x,
        sha=np.arange(4),
        phash=np.array([0, 0xFF00FF00FF, 0xFF00FF00FF << 24, 0xFFFF << 40], dtype=np.uint64),
        phash_mirror=None,
        embedding_threshold=0.97,
        phash_threshold=2,
        candidate_threshold=0.5,
        examine=examine,
    )
    dup, sig, _ = o.decide_pairs(np.array([0, 0, 0]), np.array([1, 2, 3]))
    # the band pair is a copy; the pair below the band is never looked at; the embedding's proposal
    # is rejected by the verifier (another photo of the same subject)
    assert dup.tolist() == [True, False, False] and sig[0] == "verified"
    assert asked == [(0, 1), (0, 3)]
    o.decide_pairs(np.array([1]), np.array([0]))
    assert asked == [(0, 1), (0, 3)]  # cached
    # without confirm, a global signal's proposal stands without a look
    o.confirm = False
    assert o.decide_pairs(np.array([0]), np.array([3]))[0].tolist() == [True]


def test_components_grouping_honours_the_verifier():
    """components links only the pairs the oracle accepts: a rejected proposal links nothing."""
    x = _unit([[1, 0], [1, 0.001], [1, 0.002]])
    o = PairOracle(
        embeddings=x,
        sha=np.arange(3),
        phash=np.zeros(3, np.uint64),
        phash_mirror=None,
        embedding_threshold=0.97,
        phash_threshold=None,
        examine=lambda a, b, **_: _evidence("copy" if {a, b} == {0, 1} else "distinct"),
    )
    i, j = np.array([0, 0, 1]), np.array([1, 2, 2])
    dup, _, _ = o.decide_pairs(i, j)
    g = group((i[dup], j[dup]), 3, "components", o, ctx(x, area=[3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 2]


def test_components_of_disjoint_edges():
    labels = components(6, np.array([0, 2, 3]), np.array([1, 3, 4]))
    assert labels[0] == labels[1] and labels[2] == labels[3] == labels[4]
    assert len(set(labels.tolist())) == 3


GROUP = _unit([[1, 0.00, 0], [1, 0.05, 0], [1, 0.02, 0], [1, 0.10, 0.04]])
CAPTIONS = ["red barn at dusk | stock photo", "red barn at dusk", "HD wallpaper: red barn at dusk", "barn"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("first", 0),  # first seen
        ("resolution", 2),  # largest original
        ("centroid", 1),  # nearest the mean direction
        ("farthest", 3),  # SemDeDup "hard": the most atypical
        ("caption", 1),  # the plain caption: neither a decorated variant nor a fragment
    ],
)
def test_each_representative_policy_picks_the_expected_member(policy, expected):
    c = ctx(GROUP, area=[100, 100, 400, 50], captions=CAPTIONS)
    assert rank(policy, np.arange(4), c)[0] == expected


def test_ties_fall_back_to_first_seen():
    c = ctx(GROUP, area=[5, 5, 5, 5])
    assert rank("resolution", np.array([3, 1, 2]), c).tolist() == [1, 2, 3]


def test_caption_scores_prefer_the_common_caption():
    scores = caption_scores(["a b c", "a b c d", "a b c", None])
    assert scores[0] == scores[2] > scores[1] > scores[3] == 0.0
    sampled = caption_scores(["a b c"] * 300 + ["a b"] * 10, sample=64)
    assert sampled.shape == (310,) and sampled[0] > sampled[-1]


def _recording_oracle(x, phash, **kw):
    """An oracle whose verifier records what it was asked and how, and calls (0, 1) a copy."""
    asked: list[tuple[int, int, bool, bool]] = []
    verdict = kw.pop("verdict", None)

    def examine(a, b, stretch_first=False, window_search=False):
        asked.append((a, b, stretch_first, window_search))
        return _evidence(verdict or ("copy" if (a, b) == (0, 1) else "distinct"))

    settings = dict(
        embeddings=np.asarray(x, dtype=np.float32),
        sha=np.arange(len(x)),
        phash=np.asarray(phash, dtype=np.uint64),
        phash_mirror=None,
        embedding_threshold=None,
        phash_threshold=None,
        examine=examine,
    )
    settings.update(kw)
    return PairOracle(**settings), asked


def test_components_of_no_nodes_and_of_one_node():
    assert components(0, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)
    assert components(1, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == [0]


@pytest.mark.parametrize(("bits", "same_frame"), [(20, True), (21, False)])
def test_a_whole_frame_alignment_is_tried_up_to_20_phash_bits(bits, same_frame):
    # cosine 0 (no window search from the embedding); the hash alone says "same framing"
    o, asked = _recording_oracle([[1, 0], [0, 1]], [0, (1 << bits) - 1], candidate_threshold=-1.0)
    o.decide_pairs(np.array([0]), np.array([1]))
    assert asked == [(0, 1, same_frame, same_frame)]


@pytest.mark.parametrize(("second", "window"), [([0.8, 0.6], True), ([0.79, 0.6], False)])
def test_a_window_is_searched_from_cosine_0_8_even_when_the_hash_differs(second, window):
    o, asked = _recording_oracle([[1, 0], second], [0, (1 << 40) - 1], candidate_threshold=-1.0)
    o.decide_pairs(np.array([1]), np.array([0]))  # asked in either order: the verifier sees (0, 1)
    assert asked == [(0, 1, False, window)]


@pytest.mark.parametrize(
    ("verdict", "derived", "accepted"),
    [
        ("copy", "keep", True),
        ("derived", "keep", False),
        ("derived", "remove", True),
        ("distinct", "remove", False),
    ],
)
def test_derived_pairs_follow_the_derived_setting(verdict, derived, accepted):
    o, _ = _recording_oracle(
        [[1, 0], [1, 0]], [0, 0], candidate_threshold=0.5, derived=derived, verdict=verdict
    )
    assert o.decide_pairs(np.array([0]), np.array([1]))[0].tolist() == [accepted]


def test_thresholds_are_inclusive():
    # the cosine is exactly the threshold (float32 dot of exact values), the hash distance exactly its limit
    x = [[1, 0], [0.97, 0.1]]
    o = PairOracle(
        embeddings=np.asarray(x, np.float32),
        sha=np.arange(2),
        phash=np.array([0, 0b111], np.uint64),
        phash_mirror=None,
        embedding_threshold=0.97,
        phash_threshold=None,
    )
    assert o.decide_pairs(np.array([0]), np.array([1]))[1].tolist() == ["embedding"]
    o.embedding_threshold, o.phash_threshold = None, 3
    assert o.decide_pairs(np.array([0]), np.array([1]))[1].tolist() == ["phash"]
    # the verifier's band is inclusive too
    o2, asked = _recording_oracle(x, [0, 1 << 30], candidate_threshold=0.97)
    assert o2.decide_pairs(np.array([0]), np.array([1]))[0].tolist() == [True] and len(asked) == 1


def test_linked_pairs_are_verified_whatever_their_cosine_but_exact_ones_never():
    # pairs (0, 1): cosine 0, below any band; (2, 3): the same bytes
    x = [[1, 0], [0, 1], [1, 0], [1, 0]]
    o, asked = _recording_oracle(x, [0, 0, 0, 0], candidate_threshold=0.5)
    o.sha = np.array([0, 1, 2, 2])
    i, j = np.array([0, 2]), np.array([1, 3])
    dup, sig, _ = o.decide_pairs(i, j, linked=np.array([False, False]))
    assert dup.tolist() == [False, True] and asked == []
    dup, sig, _ = o.decide_pairs(i, j, linked=np.array([True, True]))
    assert dup.tolist() == [True, True] and sig.tolist() == ["verified", "exact"]
    assert [a[:2] for a in asked] == [(0, 1)]


def test_pairs_outside_the_verify_mask_are_not_duplicates_and_not_looked_at():
    x = [[1, 0], [1, 0], [1, 0]]
    o, asked = _recording_oracle(x, [0, 0, 0], embedding_threshold=0.9)
    o.examine = lambda a, b, **_: asked.append((a, b)) or _evidence("copy")
    i, j = np.array([0, 1]), np.array([1, 2])
    dup, sig, _ = o.decide_pairs(i, j, verify=np.array([True, False]))
    assert dup.tolist() == [True, False] and sig.tolist() == ["embedding", ""] and asked == [(0, 1)]


def test_representative_groups_a_pair_and_regroups_what_the_head_does_not_cover():
    assert group(
        (np.array([0]), np.array([1])),
        2,
        "representative",
        oracle(_unit([[1, 0], [1, 0.01]])),
        ctx(_unit([[1, 0], [1, 0.01]]), area=[1, 2]),
        "resolution",
    ).representative.tolist() == [1, 1]
    # A ~ B, B ~ C, B ~ D, C ~ D; A is kept and covers only B; C and D are duplicates of each other
    theta = np.arccos(0.98)
    angles = [0, theta, 2 * theta, 2 * theta + 0.01]
    x = _unit([[np.cos(t), np.sin(t)] for t in angles])
    edges = (np.array([0, 1, 1, 2]), np.array([1, 2, 3, 3]))
    g = group(edges, 4, "representative", oracle(x), ctx(x, area=[4, 3, 2, 1]), "resolution")
    assert g.representative.tolist() == [0, 0, 2, 2]
    assert g.signal.tolist() == ["self", "embedding", "self", "embedding"]


@pytest.mark.parametrize(("to_head", "joins"), [("derived", True), ("distinct", False)])
def test_representative_takes_back_a_copy_of_its_member_only_when_close_to_it(to_head, joins):
    """0 is kept and verifies 1 and 3 as copies; 2 is a verified copy of 1 but only derived against
    0 (copies of copies lose agreement at each step): it joins 0's group. Were 2 another photograph
    against 0 (distinct), a copy verdict against 1 would not chain it in. (1 does not cover 3, so it
    does not take 0's place.)"""
    from dedup.cluster.copydetect import Evidence

    verdicts = {(0, 1): "copy", (1, 2): "copy", (0, 2): to_head, (0, 3): "copy"}
    x = _unit([[1, 0], [1, 0.01], [1, 0.02], [1, -0.01]])
    o = oracle(x, threshold=None)
    o.candidate_threshold = 0.0
    o.examine = lambda a, b, **_: Evidence(verdict=verdicts.get((min(a, b), max(a, b)), "distinct"))
    edges = (np.array([0, 1, 0]), np.array([1, 2, 3]))
    g = group(edges, 4, "representative", o, ctx(x, area=[4, 3, 2, 1]), "resolution")
    assert g.representative.tolist() == ([0, 0, 0, 0] if joins else [0, 0, 2, 0])


def test_a_plain_image_is_never_accepted_on_a_global_signal_only_verified():
    """PLAIN_KEYPOINTS: a pair with one plain side (a flat colour, a blank page) that pHash proposes is
    not a duplicate on the hash; with a verifier it is sent to the pixels, and a plain pair that no
    signal proposes and whose cosine is under the band is not looked at."""
    x = _unit([[1, 0], [0, 1], [1, 0.001], [0.001, 1], [0.7, 0.7], [-1, 0]])
    phash = np.array([5, 5, 9, 9, 0xFFFF << 40, 0xFFFF << 20], dtype=np.uint64)
    plain = np.array([True, False, False, False, True, False])
    kw = dict(embeddings=x, sha=np.arange(6), phash=phash, phash_mirror=None, phash_threshold=2)
    i, j = np.array([0, 2, 4]), np.array([1, 3, 5])
    # (0, 1): one plain side, same pHash, cosine 0; (2, 3): neither plain, same pHash;
    # (4, 5): one plain side, no signal, cosine -0.7
    signal, check, _ = PairOracle(**kw, embedding_threshold=0.97, plain=plain).proposed(i, j)
    assert signal.tolist() == ["", "phash", ""] and not check.any()
    verified = PairOracle(
        **kw, embedding_threshold=0.97, plain=plain, candidate_threshold=0.5, examine=lambda *a, **k: None
    )
    signal, check, _ = verified.proposed(i, j)
    assert signal.tolist() == ["", "phash", ""]
    assert check.tolist() == [True, True, False]  # the plain pair by its pixels; (2, 3) confirmed


def test_the_widest_head_tries_at_most_head_trials_copies_best_ranked_first():
    """0 is kept and covers its copies 1..9; 10 is linked to all of them but a copy of 9 only, and 9
    covers everything 0 covers. Copies 1..8 gain nothing and use up the eight trials, so 0 stays; a
    ninth trial finds 9, which takes 0's place."""
    from dedup.cluster.grouping import HEAD_TRIALS, _widest_head

    assert HEAD_TRIALS == 8
    verdicts = {(0, c): "copy" for c in range(1, 10)} | {(c, 9): "copy" for c in range(1, 9)}
    verdicts[(9, 10)] = "copy"
    edges = (np.array([*range(1, 10), *range(1, 10)]), np.array([10] * 9 + [0] * 9))
    o, _ = _verified(verdicts, 11)
    ordered = np.arange(11)
    assert _widest_head(ordered, edges, o) == 0
    assert _widest_head(ordered, edges, o, trials=9) == 9
    # a candidate must be linked to a member the head leaves out: unlink 10 from 1..8 and one trial
    # is enough
    o, _ = _verified(verdicts, 11)
    assert _widest_head(ordered, (np.array([9]), np.array([10])), o, trials=1) == 9
    # and it must cover everything the head covered: 9 loses 5, so 0 stays
    o, _ = _verified({k: v for k, v in verdicts.items() if k != (5, 9)}, 11)
    assert _widest_head(ordered, (np.array([9]), np.array([10])), o, trials=1) == 0


def test_rejoin_needs_an_accepted_link_to_a_member_the_representative_took():
    """2 was left by 0 (only derived against it); it comes back only through a copy verdict against a
    member 0 took (1): not through an edge whose pair the verifier calls distinct, nor through a copy
    of another member that was left too (3)."""
    from dedup.cluster.grouping import _rejoin

    def run(verdicts, edges):
        o, _ = _verified(verdicts, 4)
        rep = np.array([0, 0, 2, 3])
        signal = np.array(["self", "verified", "self", "self"], dtype=object)
        sim = np.ones(4, dtype=np.float32)
        still = _rejoin(np.arange(4), np.array([2, 3]), edges, o, rep, signal, sim)
        return still.tolist(), rep.tolist(), signal.tolist()

    base = {(0, 1): "copy", (0, 2): "derived"}
    assert run(base | {(1, 2): "copy"}, (np.array([1]), np.array([2]))) == (
        [3],
        [0, 0, 0, 3],
        ["self", "verified", "verified", "self"],
    )
    assert run(base | {(1, 2): "distinct"}, (np.array([1]), np.array([2])))[0] == [2, 3]
    assert run(base | {(2, 3): "copy"}, (np.array([2]), np.array([3])))[0] == [2, 3]
    assert run({(0, 1): "copy", (1, 2): "copy"}, (np.array([1]), np.array([2])))[0] == [2, 3]  # far from 0


def test_a_copy_that_covers_no_more_than_the_head_does_not_take_its_place():
    """0 covers 1 and 2; 1 is a verified copy of 0 covering the same two (0 and 2) and is linked to 2:
    with nothing left out, the policy's choice stands. And where 0 leaves 2 and 3 out and its copy 1
    covers 2 (a gain) but not 3, 1 takes 0's place: it must cover all the head covered, not all there is."""
    from dedup.cluster.grouping import _widest_head

    same = {(0, 1): "copy", (0, 2): "copy", (1, 2): "copy"}
    o, _ = _verified(same, 3)
    assert _widest_head(np.arange(3), (np.array([1]), np.array([2])), o) == 0
    gain = {(0, 1): "copy", (1, 2): "copy"}
    o, _ = _verified(gain, 4)
    assert _widest_head(np.arange(4), (np.array([1, 3]), np.array([2, 2])), o) == 1


def test_rejoin_reads_only_the_left_members_own_links():
    """2 is left; an accepted pair between two members the representative took (1, 3) is no link of 2's,
    so 2 stays left although the verifier would call it a copy of 3."""
    from dedup.cluster.grouping import _rejoin

    o, _ = _verified({(0, 1): "copy", (0, 3): "copy", (0, 2): "derived", (2, 3): "copy"}, 4)
    rep = np.array([0, 0, 2, 0])
    signal = np.array(["self", "verified", "self", "verified"], dtype=object)
    still = _rejoin(np.arange(4), np.array([2]), (np.array([1]), np.array([3])), o, rep, signal, np.ones(4))
    assert still.tolist() == [2] and rep.tolist() == [0, 0, 2, 0]
