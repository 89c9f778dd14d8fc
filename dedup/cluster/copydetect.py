"""Is B a copy of A, an image derived from it, or another photograph of the same subject?

Keypoints in the same geometric arrangement are not enough: two portraits of one person aligned on
the face, two frames of one room, or one product template with a different product all share
keypoints in a consistent arrangement. What only a copy has is *the same pixels*: once one image
is aligned onto the other with the fitted transform (and brightness/contrast are normalised), a
copy agrees everywhere up to resampling and compression noise, and a different photograph does
not. The evidence per pair, each a number a user can read in ``pairs.parquet``:

* ``inliers`` / ``inlier_ratio``: ORB matches consistent with one similarity transform;
* ``coverage``: the share of the *contained* image (the crop, the un-letterboxed original) that the
  other image covers once aligned; a copy contains the other image, two overlapping shots of a
  panorama or an aerial survey do not;
* ``pixel_match``: the share of informative patches (textured in at least one image) whose aligned
  pixels agree (normalised cross-correlation after blur, same local brightness);
* ``color_match``: whether the colours agree once aligned (a recoloured image is derived, not a copy).

Verdicts: ``copy`` (covered, nearly every patch agrees, same colours), ``derived`` (covered, most
patches agree but a region or the colours changed: an element added or removed, a recolour, a large
overlay), ``distinct`` (anything else). Whether a derived image counts as a duplicate is the
``derived`` policy of the cluster stage. Alignments tried, each straight and mirrored: a plain
stretch of one frame onto the other (re-encodes, rescales, aspect changes, images too smooth for
keypoints), a template-matched window (light crops of smooth images), the ORB similarity fit (crops,
rotations, borders) and, when that nearly agrees, an ORB affine fit with one scale per axis
(stretched, reframed copies).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from dedup.cluster import verifier_settings as S
from dedup.cluster.geometry import (
    Features,
    Keypoints,
    Prepared,
    contained_coverage,
    fit_matches,
    invert,
    mirror_of,
    prepare,
    stretch,
    window,
)
from dedup.cluster.pixels import compare


@dataclass(frozen=True)
class Evidence:
    """Why a pair was, or was not, called a copy."""

    inliers: int = 0
    inlier_ratio: float = 0.0
    coverage: float = 0.0
    pixel_match: float = 0.0
    color_match: float = 0.0
    detail: float = 1.0  # fine detail of the contained image over its match's (> DETAIL_RATIO: a new shot)
    alignment: str = "none"  # orb, orb-mirrored, stretch, stretch-mirrored
    verdict: str = "distinct"
    tier: str = "unaligned"  # the cascade's tier that decided (verifier_settings.TIERS)

    @property
    def score(self) -> float:
        """One number to rank alignments of one pair: covered, then agreeing pixels (at most S.MAX_SCORE)."""
        return min(self.coverage / S.MIN_COVERAGE, 1.0) + self.pixel_match


def verdict(coverage: float, pixel_match: float, color_match: float, detail: float = 1.0) -> str:
    if coverage < S.MIN_COVERAGE or detail > S.DETAIL_RATIO:
        return "distinct"
    if pixel_match >= S.COPY_MATCH:
        return "copy" if color_match >= S.COLOR_MATCH else "derived"
    if pixel_match >= S.DERIVED_MATCH:
        return "derived"
    return "distinct"


def examine(
    a: Prepared,
    b: Prepared,
    features: Features,
    min_inliers: int = S.MIN_FIT_INLIERS,
    stretch_first: bool = True,
    window_search: bool = True,
) -> Evidence:
    """The best alignment of b onto a and its verdict.

    Per orientation (straight, then mirrored), cheapest first, stopping at the first copy: the
    keypoint matches are found first (a millisecond or two); when they pin a partial overlap
    (_pinned_apart) nothing else of that orientation is tried. Otherwise the stretch (most copies are
    re-encodes and rescales of the whole frame), then the ORB fit (crops, borders, rotations). Without
    ``stretch_first`` (a pair whose global descriptors differ: at best a crop), the stretch is tried
    only after a failed fit, and a pair with no keypoint fit costs no pixel comparison at all.
    ``window_search`` (the frames look alike) tries a template-matched window (a light crop).
    """
    same = same_pixels(a, b)
    if same is not None:
        return same
    best = Evidence()
    top = (0, 0.0)  # the most keypoint inliers seen, and their ratio
    for mirrored in (False, True):
        bb = mirror_of(b) if mirrored else b
        suffix = "-mirrored" if mirrored else ""
        matched = features.matches(a, bb)
        fit = fit_matches(matched)
        pinned = _pinned_apart(a, bb, fit, matched, suffix) if S.CASCADE else None
        if pinned is not None:
            best = pinned if pinned.score > best.score else best
            top = max(top, fit[1:])
            continue
        hints = (min_inliers, stretch_first, window_search)
        best = _orientation(a, bb, suffix, fit, matched, best, top, hints)
        top = fit[1:] if fit[1] > top[0] else top
        if _settled(best):
            break
    if not best.alignment.startswith("orb"):
        # report the keypoint evidence that was gathered, even when the stretch aligned better
        best = Evidence(**{**best.__dict__, "inliers": top[0], "inlier_ratio": top[1]})
    return best


def _orientation(
    a: Prepared,
    bb: Prepared,
    suffix: str,
    fit: tuple[np.ndarray | None, int, float],
    matched: tuple[np.ndarray, np.ndarray] | None,
    best: Evidence,
    top: tuple[int, float],
    hints: tuple[int, bool, bool],
) -> Evidence:
    """One orientation's placements, cheapest first, until the verdict is settled: the stretch, the
    windows, the keypoint fit, then (when it nearly agrees or many keypoints match) the affine fit
    with one scale per axis and the late stretch. ``top``: the keypoints seen before this orientation
    (what a stretch or window reports); ``hints``: min_inliers, stretch_first, window_search."""
    min_inliers, stretch_first, window_search = hints
    m, inliers, ratio = fit

    def take(e: Evidence) -> bool:
        nonlocal best
        best = e if e.score > best.score else best
        return _settled(best)

    if stretch_first and take(_evidence(a, bb, stretch(a, bb), "stretch" + suffix, *top)):
        return best
    if window_search:
        # a light crop of a smooth image: find the window by template matching, either way round
        for m_win in (window(a, bb), _inverse_or_none(window(bb, a))):
            if m_win is not None:
                take(_evidence(a, bb, m_win, "window" + suffix, *top))
        if _settled(best):
            return best
    if m is not None and inliers >= min_inliers and take(_evidence(a, bb, m, "orb" + suffix, inliers, ratio)):
        return best
    worth = best.pixel_match >= S.DERIVED_MATCH or inliers >= S.STRETCH_FIT_INLIERS
    if inliers >= min_inliers and worth:
        # a stretched copy (another aspect ratio, perhaps also reframed) is no similarity, but one
        # nearly agrees or many keypoints match: fit each axis its own scale from the same matches,
        # and try the whole-frame stretch
        tries = [(fit_matches(matched, stretch=True), "orb-stretch" + suffix)]
        if not stretch_first:
            tries.append(((stretch(a, bb), inliers, ratio), "stretch" + suffix))
        for (m_s, n_s, r_s), name in tries:
            if m_s is not None:
                take(_evidence(a, bb, m_s, name, n_s, r_s))
    return best


def _pinned_apart(
    a: Prepared,
    b: Prepared,
    fit: tuple[np.ndarray | None, int, float],
    matched: tuple[np.ndarray, np.ndarray] | None,
    suffix: str,
) -> Evidence | None:
    """The cascade's geometric reject: the keypoints agree on one placement of b in a, confidently
    (PIN_INLIERS and PIN_RATIO, for the similarity fit and again for the affine fit, which is what a
    stretched copy needs), and under both the contained image is not covered: another view of the
    scene or an overlapping crop, whatever the pixels say. None when the fits do not pin it."""
    m, inliers, ratio = fit
    if m is None or inliers < S.PIN_INLIERS or ratio < S.PIN_RATIO:
        return None
    coverage = contained_coverage(m, a, b)
    if coverage >= S.MIN_COVERAGE:
        return None
    m_s, n_s, r_s = fit_matches(matched, stretch=True)
    if (
        m_s is None
        or n_s < S.PIN_INLIERS
        or r_s < S.PIN_RATIO
        or contained_coverage(m_s, a, b) >= S.MIN_COVERAGE
    ):
        return None
    return Evidence(inliers=inliers, inlier_ratio=ratio, coverage=coverage, alignment="orb" + suffix,
                    tier="overlap")  # fmt: skip


def _settled(best: Evidence) -> bool:
    """No other alignment can change the verdict: a copy, or (with the cascade) a recolour: covered,
    its pixels agree as a copy's do and only the colours disagree. The colours are the pair's, not
    the alignment's, so the remaining alignments (each refined and compared at full size: what a
    recoloured crop costs) are not tried. Also an alignment no other can outscore (covered, every
    patch agreeing): only a higher score replaces the best, so its verdict stands, whatever it is
    (a sharper crop of the same view, "distinct" by its detail, tried every placement before)."""
    if best.verdict == "copy" or best.score >= S.MAX_SCORE:
        return True
    return S.CASCADE and best.verdict == "derived" and best.pixel_match >= S.COPY_MATCH


def _inverse_or_none(m: np.ndarray | None) -> np.ndarray | None:
    return None if m is None else invert(m)


def _evidence(
    a: Prepared, b: Prepared, transform: np.ndarray, name: str, inliers: int, ratio: float
) -> Evidence:
    m = compare(a, b, transform)
    return Evidence(
        inliers=inliers,
        inlier_ratio=ratio,
        coverage=m.coverage,
        pixel_match=m.pixel_match,
        color_match=m.color_match,
        detail=m.detail,
        alignment=name,
        verdict=verdict(m.coverage, m.pixel_match, m.color_match, m.detail),
        tier=m.tier,
    )


def same_pixels(a: Prepared, b: Prepared) -> Evidence | None:
    """The cascade's first tier: both decode to the same picture at the same size (a lossless
    re-encode, a high-quality re-save, one image in two formats): a copy, with no alignment."""
    if a.gray.shape != b.gray.shape:
        return None
    diff = cv2.absdiff(a.lab, b.lab)
    if float(diff.mean()) > S.SAME_PIXELS_MEAN:
        return None
    # the tail: 99.9 % of pixel values within SAME_PIXELS_TAIL (a changed region is not a copy)
    if float(np.count_nonzero(diff > S.SAME_PIXELS_TAIL)) > 0.001 * diff.size:
        return None
    return Evidence(coverage=1.0, pixel_match=1.0, color_match=1.0, alignment="same-pixels",
                    verdict="copy", tier="same-pixels")  # fmt: skip


class CopyVerifier:
    """Evidence for pairs of images held by integer id: bytes are kept, decoded images are cached
    (most recently used first), keypoints computed once per decoded image."""

    def __init__(
        self, min_inliers: int = S.MIN_FIT_INLIERS, cache: int = 4096, keypoint_cache: int = 32_768
    ) -> None:
        self.min_inliers = min_inliers
        self._bytes: dict[int, bytes] = {}
        self._prepared: OrderedDict[int, Prepared | None] = OrderedDict()
        self._cache = cache
        # An evicted image's keypoints (~20 KB an orientation), kept apart from its pixels (~0.5 MB):
        # a component of thousands of images visits each one many times in no local order, and
        # decoding again costs a fraction of detecting again (10k scaling set: 7x as many decodes as
        # images with 512 images cached).
        self._keypoints: OrderedDict[int, tuple[Keypoints | None, Keypoints | None]] = OrderedDict()
        self._keypoint_cache = keypoint_cache
        self._lock = threading.Lock()  # the cache is shared by verifying threads
        self._local = threading.local()  # an ORB detector per thread (OpenCV's is not thread-safe)

    def add_images(self, images: Iterable[tuple[int, bytes]]) -> None:
        for row, data in images:
            self._bytes[int(row)] = data

    def has_images(self, ids: np.ndarray) -> np.ndarray:
        return np.array([int(i) in self._bytes for i in ids], dtype=bool)

    def prepared(self, row: int) -> Prepared | None:
        with self._lock:
            if row in self._prepared:
                self._prepared.move_to_end(row)
                return self._prepared[row]
        data = self._bytes.get(row)
        p = prepare(data) if data is not None else None  # decoded outside the lock
        with self._lock:
            if row in self._prepared:  # another thread decoded it meanwhile: keep one copy
                return self._prepared[row]
            if p is not None and row in self._keypoints:
                p.keypoints, mirrored = self._keypoints.pop(row)
                if mirrored is not None:
                    mirror_of(p).keypoints = mirrored
            self._prepared[row] = p
            if len(self._prepared) > self._cache:
                self._keep_keypoints(*self._prepared.popitem(last=False))
        return p

    def _keep_keypoints(self, row: int, p: Prepared | None) -> None:
        """Called under the lock as ``p`` leaves the image cache: what was detected on it stays."""
        if p is None or p.keypoints is None:
            return
        self._keypoints[row] = (p.keypoints, p.mirrored.keypoints if p.mirrored is not None else None)
        if len(self._keypoints) > self._keypoint_cache:
            self._keypoints.popitem(last=False)

    @property
    def _features(self) -> Features:
        if not hasattr(self._local, "features"):
            self._local.features = Features()
        return self._local.features

    def examine(self, a: int, b: int, stretch_first: bool = True, window_search: bool = True) -> Evidence:
        pa, pb = self.prepared(a), self.prepared(b)
        if pa is None or pb is None:
            return Evidence(alignment="undecodable", tier="undecodable")
        return examine(pa, pb, self._features, self.min_inliers, stretch_first, window_search)
