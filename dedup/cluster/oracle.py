"""The one pair decision: are two samples duplicates, and by which signal (PairOracle), built from
the cluster config (pair_oracle). The pairs table, every grouping policy and ``--against`` ask it.

Same bytes decide alone. The global signals (pHash distance, embedding cosine) *propose* a pair; with
the copy verifier and ``confirm``, a proposed pair is a duplicate only when the verifier calls it a
copy (or a derived image under ``derived: remove``). The verifier's evidence is cached per pair and
may be computed ahead on threads (``prefetch``): a pair's evidence depends only on its two images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dedup.cluster.copydetect import CopyVerifier
from dedup.core.config import ClusterConfig

STRETCH_COSINE = 0.8  # frames this alike are worth a whole-frame alignment before keypoints
STRETCH_PHASH = 20
# An image with fewer ORB keypoints than this (embed's local_count) is plain: a flat colour, a blank
# page, a smooth gradient. Its hash and embedding say next to nothing (a white and a black image share
# a pHash), so no global signal accepts a pair with a plain image alone: only its pixels can.
PLAIN_KEYPOINTS = 8


@dataclass
class PairOracle:
    """The one place that decides whether two samples are duplicates, and by which signal.

    Every grouping policy and the pair table ask it. Same bytes decide alone. The global signals
    (pHash distance, embedding cosine) *propose* a pair; with a copy verifier (``examine``) and
    ``confirm``, a proposed pair is a duplicate only when the verifier calls it a copy (or a derived
    image under ``derived: remove``): global signals cannot tell a copy from another photo of the
    same subject. Pairs no global signal proposes but similar enough (``candidate_threshold``) are
    verified too, which recovers crops. Verdicts are cached in ``evidence``.
    """

    embeddings: np.ndarray
    sha: np.ndarray  # (n,) integer id of each sample's sha256
    phash: np.ndarray
    phash_mirror: np.ndarray | None
    embedding_threshold: float | None
    phash_threshold: int | None
    mirror_view: Callable[[np.ndarray], np.ndarray] | None = None
    candidate_threshold: float | None = None
    examine: Callable[[int, int], Any] | None = None  # (a, b) -> copydetect.Evidence
    confirm: bool = True
    derived: str = "keep"
    plain: np.ndarray | None = None  # per sample: too plain for a global signal to accept alone
    evidence: dict[tuple[int, int], Any] = field(default_factory=dict)
    workers: int = 1  # threads examining the pairs one question asks about (answers do not depend on it)

    def cosine_pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        from dedup.cluster.search import pair_cosine

        return pair_cosine(self.embeddings, np.asarray(i), np.asarray(j), self.mirror_view)

    def cosine(self, a: int, bs: np.ndarray) -> np.ndarray:
        bs = np.asarray(bs, dtype=np.int64)
        return self.cosine_pairs(np.full(len(bs), a, dtype=np.int64), bs)

    def accepts(self, evidence: Any) -> bool:
        return evidence.verdict == "copy" or (evidence.verdict == "derived" and self.derived == "remove")

    def check(self, a: int, b: int) -> Any:
        """The verifier's evidence for a pair, computed once."""
        pair = (min(a, b), max(a, b))
        if pair not in self.evidence:
            self.prefetch(np.array([a]), np.array([b]))
        return self.evidence[pair]

    def prefetch(self, i: np.ndarray, j: np.ndarray) -> None:
        """Examine the pairs (i[t], j[t]) not examined yet, on ``workers`` threads when there are
        several: a grouping asks about a representative against every member at once, and each pair's
        evidence depends only on its two images (measured: at 10^4 images these checks were 50 s on
        one thread). The one place the verifier is called from."""
        if self.examine is None:
            return
        asked = zip(np.asarray(i).tolist(), np.asarray(j).tolist(), strict=True)
        todo = sorted({(min(a, b), max(a, b)) for a, b in asked} - self.evidence.keys())
        if not todo:
            return
        from concurrent.futures import ThreadPoolExecutor

        import cv2

        a = np.array([p[0] for p in todo], dtype=np.int64)
        b = np.array([p[1] for p in todo], dtype=np.int64)
        same_frame, alike = self.hints(a, b)

        def one(t: int) -> Any:
            return self.examine(  # type: ignore[misc]
                int(a[t]), int(b[t]), stretch_first=bool(same_frame[t]), window_search=bool(alike[t])
            )

        if self.workers <= 1 or len(todo) < 2:
            for t, pair in enumerate(todo):
                self.evidence[pair] = one(t)
            return
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # the threads here, not OpenCV's, share the cores (as in the verify step)
        try:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for pair, e in zip(todo, pool.map(one, range(len(todo))), strict=True):
                    self.evidence[pair] = e
        finally:
            cv2.setNumThreads(threads)

    def hints(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stretch_first, window_search) per pair: the same framing (a whole-frame stretch is worth
        trying first) shows in the perceptual hash; a light crop may not, but keeps the global look
        (a window is worth searching for)."""
        from dedup.cluster.hash_candidates import pair_phash_distance

        same_frame = pair_phash_distance(self.phash, self.phash_mirror, i, j) <= STRETCH_PHASH
        return same_frame, same_frame | (self.cosine_pairs(i, j) >= STRETCH_COSINE)

    def proposed(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signal name or "", needs verification, cosine) per pair, from the cheap signals alone."""
        from dedup.cluster.hash_candidates import pair_phash_distance

        n = len(i)
        cos = self.cosine_pairs(i, j)
        by_emb = (
            cos >= self.embedding_threshold if self.embedding_threshold is not None else np.zeros(n, bool)
        )
        if self.phash_threshold is not None:
            by_hash = pair_phash_distance(self.phash, self.phash_mirror, i, j) <= self.phash_threshold
        else:
            by_hash = np.zeros(n, bool)
        exact = self.sha[i] == self.sha[j]
        plain = self.plain[i] | self.plain[j] if self.plain is not None else np.zeros(n, bool)
        signal = np.full(n, "", dtype=object)
        signal[by_emb & ~plain] = "embedding"
        signal[by_hash & ~plain] = "phash"
        signal[exact] = "exact"
        if self.examine is None:
            return signal, np.zeros(n, bool), cos
        band = (signal == "") & (
            (cos >= self.candidate_threshold if self.candidate_threshold is not None else np.zeros(n, bool))
            | (plain & (by_emb | by_hash))  # a plain pair a global signal proposed: its pixels decide
        )
        check = band | ((signal != "") & ~exact & self.confirm)
        return signal, check, cos

    def decide_pairs(
        self,
        i: np.ndarray,
        j: np.ndarray,
        verify: np.ndarray | None = None,
        linked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(is duplicate, signal name, cosine) for each pair (i[t], j[t]).

        ``linked`` (a mask) marks pairs other evidence proposes (shared keypoints, one group): with a
        verifier they are checked whatever their cosine. ``verify`` (a mask) limits which pairs the
        verifier may look at; a pair that needs a check and is outside it is not a duplicate (a bound
        on verification work, never a free pass).
        """
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        signal, check, cos = self._asked(i, j, linked)
        if verify is not None:
            signal[check & ~verify] = ""
            check = check & verify
        self.prefetch(i[check], j[check])
        for t in np.flatnonzero(check):
            if self.accepts(self.check(int(i[t]), int(j[t]))):
                signal[t] = signal[t] or "verified"
            else:
                signal[t] = ""
        return signal != "", signal, cos

    def _asked(
        self, i: np.ndarray, j: np.ndarray, linked: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signal, needs the verifier, cosine) per pair: what the cheap signals leave to it, and
        with a verifier every ``linked`` pair but same bytes."""
        signal, check, cos = self.proposed(i, j)
        if linked is not None and self.examine is not None:
            check = check | (linked & (signal != "exact"))
        return signal, check, cos

    def prefetch_linked(self, i: np.ndarray, j: np.ndarray) -> None:
        """Examine ahead, on the oracle's threads, the pairs of (i, j) that ``decide`` would examine
        (pairs of one group: linked): a grouping's first question of every component, asked at once
        (one component's question is a pair or two; at 10^4 images there were 1,881 of them)."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        _, check, _ = self._asked(i, j, np.ones(len(i), dtype=bool))
        self.prefetch(i[check], j[check])

    def decide(self, a: int, bs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(is duplicate, signal name, cosine) of ``a`` against each of ``bs``."""
        bs = np.asarray(bs, dtype=np.int64)
        # asked by a grouping, so a and bs share a group already: worth a verifier's look
        return self.decide_pairs(np.full(len(bs), a, dtype=np.int64), bs, linked=np.ones(len(bs), bool))


def pair_oracle(config, embeddings, sha, phash, phash_m, mirror, t_emb, t_cand, plain=None):
    """The one pair decision (``PairOracle``) with the config's signals, verifier, confirm and derived
    policy; self-dedup and ``--against`` both build it here."""
    use = set(config.signals)
    verifier = CopyVerifier(min_inliers=config.orb_min_inliers) if config.verify == "orb" else None
    oracle = PairOracle(
        embeddings=embeddings,
        sha=sha,
        phash=phash,
        phash_mirror=phash_m,
        embedding_threshold=t_emb if "embedding" in use else None,
        phash_threshold=config.phash_threshold if "phash" in use else None,
        mirror_view=mirror,
        candidate_threshold=t_cand if verifier is not None else None,
        examine=verifier.examine if verifier is not None else None,
        confirm=config.confirm,
        derived=config.derived,
        plain=plain,
        workers=local_threads(config),
    )
    return oracle, verifier


def local_threads(config: ClusterConfig) -> int:
    """Threads examining pairs in this process (a unit's batches, the grouping's checks): the
    configured count, else one per core, at most 4 (the Python parts hold the GIL)."""
    import os

    return min(4, config.verify_workers or os.cpu_count() or 1)
