"""From accepted duplicate pairs to groups, under a stated policy for transitive chains.

If A~B and B~C but A and C are not alike, plain connected components put all three in one group:
on real photos chains through look-alikes (two grass tiles, two views of one wall) can merge
unrelated images into one giant group. The policies:

* ``components``: connected components of the accepted pairs, the loosest reading (the pairs are
  still the oracle's: with a verifier, only verified pairs link).
* ``representative`` (default): within a component, the best-ranked member is the representative and
  keeps only members that are *directly* duplicates of it; the rest are split off and grouped again
  the same way among themselves. Every member of a group is a direct duplicate of what is kept. With
  a verifier, a verified copy of the best-ranked member that covers everything it covers and more
  takes its place (the original beside an upscaled crop of it: :func:`_widest_head`).
* ``semdedup``: SemDeDup's rule: walk the component best-ranked first; a member is dropped when it is
  a duplicate of any member ranked above it, and joins that member's group.

"Directly duplicates" is decided per pair by :class:`PairOracle`, the same decision as the pairs'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dedup.cluster.oracle import PairOracle
from dedup.cluster.representatives import RankContext, rank
from dedup.core.config import DerivedPolicy

GROUPINGS = ("components", "representative", "semdedup")


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label per node of the undirected graph with edges (i, j)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


DERIVED_POLICIES = get_args(DerivedPolicy)
HEAD_TRIALS = 8  # duplicates of the kept image tried in its place, per group (_widest_head)


@dataclass
class Grouped:
    """Per row: the row of its group's representative, the signal and cosine linking it to it."""

    representative: np.ndarray
    signal: np.ndarray
    similarity: np.ndarray


def group(
    edges: tuple[np.ndarray, np.ndarray],
    n: int,
    policy: str,
    oracle: PairOracle,
    ctx: RankContext,
    representative_policy: str,
) -> Grouped:
    """Group ``n`` samples linked by accepted duplicate ``edges`` (i, j) under ``policy``."""
    labels = components(n, *edges)
    rep = np.arange(n)
    signal = np.full(n, "self", dtype=object)
    sim = np.ones(n, dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    if policy == "representative":
        _ask_heads_ahead(np.split(order, bounds), oracle, ctx, representative_policy)
    ei, ej = edges
    e_order = np.argsort(labels[ei], kind="stable") if len(ei) else np.zeros(0, dtype=np.int64)
    e_labels = labels[ei][e_order] if len(ei) else np.zeros(0, dtype=np.int64)
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        lo, hi = (
            np.searchsorted(e_labels, labels[members[0]], side="left"),
            np.searchsorted(e_labels, labels[members[0]], side="right"),
        )
        component_edges = (ei[e_order[lo:hi]], ej[e_order[lo:hi]])
        if policy == "components":
            _assign_star(members, oracle, ctx, representative_policy, rep, signal, sim, require_direct=False)
        elif policy == "representative":
            _split_by_representative(
                members, component_edges, oracle, ctx, representative_policy, rep, signal, sim
            )
        elif policy == "semdedup":
            _semdedup(members, oracle, ctx, representative_policy, rep, signal, sim)
        else:
            raise ValueError(f"unknown grouping {policy!r}; choose from {', '.join(GROUPINGS)}")
    return Grouped(rep, signal, sim)


def _ask_heads_ahead(groups: list[np.ndarray], oracle: PairOracle, ctx: RankContext, policy: str) -> None:
    """Every group's best-ranked member against its other members, examined at once on the oracle's
    threads: what the representative grouping asks first of each group (evidence is cached, so the
    answers are the same whenever they are computed)."""
    heads, members = [], []
    for rows in groups:
        if len(rows) > 1:
            ordered = rank(policy, rows, ctx)
            heads.append(np.full(len(ordered) - 1, ordered[0], dtype=np.int64))
            members.append(np.asarray(ordered[1:], dtype=np.int64))
    if heads:
        oracle.prefetch_linked(np.concatenate(heads), np.concatenate(members))


def _assign_star(
    members, oracle, ctx, policy, rep, signal, sim, require_direct: bool, edges=None
) -> np.ndarray:
    """Make the best-ranked member the representative; return the members it does not directly cover.

    With ``require_direct`` and the group's accepted ``edges``, a verified copy of the best-ranked
    member may take its place (:func:`_widest_head`)."""
    ordered = rank(policy, members, ctx)
    if require_direct and edges is not None:
        head = _widest_head(ordered, edges, oracle)
        ordered = np.concatenate([[head], ordered[ordered != head]]).astype(ordered.dtype)
    head, rest = int(ordered[0]), ordered[1:]
    if require_direct:
        dup, sig, cos = oracle.decide(head, rest)
        take = dup
    else:
        # components: membership comes from the (already decided) pairs; label only, verify nothing
        sig, _, cos = oracle.proposed(np.full(len(rest), head, dtype=np.int64), np.asarray(rest, np.int64))
        take = np.ones(len(rest), dtype=bool)
    rep[rest[take]] = head
    signal[rest[take]] = np.where(sig[take] != "", sig[take], "chain")
    sim[rest[take]] = cos[take]
    return rest[~take]


def _split_by_representative(members, edges, oracle, ctx, policy, rep, signal, sim) -> None:
    i, j = edges
    work = [np.asarray(members)]
    while work:
        group_rows = work.pop()
        if len(group_rows) < 2:
            continue
        left = _assign_star(
            group_rows, oracle, ctx, policy, rep, signal, sim, require_direct=True, edges=edges
        )
        left = _rejoin(group_rows, left, edges, oracle, rep, signal, sim)
        if len(left) < 2:
            continue
        # What the representative does not cover is regrouped by the accepted pairs among itself,
        # so a chain broken at the representative becomes separate groups.
        inside = np.isin(i, left) & np.isin(j, left)
        local = {int(r): t for t, r in enumerate(left)}
        li = np.array([local[int(r)] for r in i[inside]], dtype=np.int64)
        lj = np.array([local[int(r)] for r in j[inside]], dtype=np.int64)
        sub = components(len(left), li, lj)
        for label in np.unique(sub):
            work.append(left[sub == label])


def _covers(head: int, rows: np.ndarray, oracle: PairOracle) -> np.ndarray:
    """Which of ``rows`` are accepted duplicates of ``head`` (``head`` itself: False)."""
    out = np.zeros(len(rows), dtype=bool)
    others = rows != head
    out[others] = oracle.decide(head, rows[others])[0]
    return out


def _widest_head(ordered: np.ndarray, edges, oracle: PairOracle, trials: int = HEAD_TRIALS) -> int:
    """The policy's first choice, unless a verified copy of it covers everything it covers and more.

    An original, its crops and an upscaled crop of it: ``resolution`` ranks the upscaled crop first,
    but the other crops are not inside it, so they would stay behind as groups of their own (copies
    left). The original is a copy of that crop and covers them all. Only a verified copy of the
    current head (verdict ``copy``: a derived image is another picture) that covers a strict superset
    of what it covers (the old head included) replaces it: every removal stays a direct duplicate of
    the image kept, and the policy's choice stands whenever it covers its group. Candidates are the
    head's copies linked by an accepted pair to a member it leaves out, best-ranked first, at most
    ``trials`` of them (a bound on verification work)."""
    head = int(ordered[0])
    if oracle.examine is None:
        return head  # unverified pairs chain through look-alikes: no evidence to prefer another
    covered = _covers(head, ordered, oracle)
    i, j = (np.asarray(e) for e in edges)
    tried = {head}
    while trials > 0:
        left = ordered[~covered & (ordered != head)]
        if len(left) == 0:
            break
        linked = np.union1d(j[np.isin(i, left)], i[np.isin(j, left)])
        candidates = [
            int(c)
            for c in ordered[covered]
            if int(c) not in tried and c in linked and oracle.check(head, int(c)).verdict == "copy"
        ]
        if not candidates:
            break
        c = candidates[0]
        tried.add(c)
        trials -= 1
        gains = oracle.decide(c, left)[0]
        if not gains.any():
            continue
        need = ordered[(covered | (ordered == head)) & (ordered != c)]
        if all(oracle.decide(c, np.array([x]))[0][0] for x in need):
            head, covered = c, _covers(c, ordered, oracle)
    return head


def _rejoin(group_rows, left, edges, oracle, rep, signal, sim) -> np.ndarray:
    """Members the representative did not take that still belong with it: a verified copy of a
    member it took, and close to the representative itself (the verifier's ``derived`` or better:
    covered, most patches agreeing). Copies of copies lose a little agreement at each step (a
    rotated copy against a mirrored, bordered one), so a copy of the original can fall just short
    against another copy chosen to represent the group. Another photograph of the subject is seldom
    close to the representative (covered, most of its patches agreeing), so a false copy verdict
    against one member does not by itself delete a photograph. Returns who is still left."""
    if oracle.examine is None or len(left) == 0:
        return left
    taken = group_rows[~np.isin(group_rows, left)]
    head = next(int(t) for t in taken if rep[t] == t)  # the representative keeps itself
    members = {int(t) for t in taken}
    i, j = edges
    still = []
    for x in left:
        x = int(x)
        partners = np.concatenate([j[i == x], i[j == x]])
        linked = any(int(m) in members and oracle.accepts(oracle.check(x, int(m))) for m in partners)
        if linked and oracle.check(x, head).verdict in ("copy", "derived"):
            rep[x] = head
            signal[x] = "verified"
            sim[x] = float(oracle.cosine(head, np.array([x]))[0])
        else:
            still.append(x)
    return np.array(still, dtype=np.asarray(left).dtype)


def _semdedup(members, oracle, ctx, policy, rep, signal, sim) -> None:
    ordered = rank(policy, members, ctx)
    kept_root: dict[int, int] = {}
    for t, a in enumerate(ordered):
        a = int(a)
        if t == 0:
            kept_root[a] = a
            continue
        above = ordered[:t]
        dup, sig, cos = oracle.decide(a, above)
        if not dup.any():
            kept_root[a] = a
            continue
        best = int(np.argmax(np.where(dup, cos, -np.inf)))
        root = kept_root[int(above[best])]
        kept_root[a] = root
        rep[a] = root
        signal[a] = sig[best]
        sim[a] = float(oracle.cosine(root, np.array([a]))[0])
