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

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

SIDE = 256  # longest side images are normalised to before features and alignment
COMPARE_SIDE = 256  # longest side of the contained image when pixels are compared (at most)
MIN_COMPARE_SIDE = 32
PATCH = 8  # smallest patch side (pixels)
PATCHES_ACROSS = 16  # patches across the compared image's longest side (larger patches at finer scales)
BLUR_SIGMA = 1.0  # suppresses JPEG blocks and resampling differences before comparing
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 3.0
RANSAC_SEED = 12345
MAX_ROTATION_DEG = 20.0
SCALE_RANGE = (0.25, 4.0)  # between the two normalised frames (crops of 30 % a side need ~2.5)
MAX_STRETCH = 1.5  # one axis scaled this much more than the other (an aspect change) at most
MAX_SHEAR = 0.05  # cosine of the angle between the transformed axes (0: perpendicular)
MIN_FIT_INLIERS = 5
STRETCH_FIT_INLIERS = 20  # keypoint matches that make an affine (per-axis) fit worth its cost
WINDOW_SIDE = 64  # template matching runs at this size
WINDOW_SCALES = (0.70, 0.76, 0.82, 0.86, 0.90, 0.93, 0.96, 0.98)  # b's size within a's frame
WINDOW_MIN_SCORE = 0.7
ECC_ITERATIONS = 30
ECC_LEVELS = (0.25, 0.5, 1.0)  # coarse to fine, so a stretch off by a 10 % crop still converges
ECC_MAX_SHIFT = 0.2  # share of the frame a refinement may move a corner by (a 10 % crop a side)

# Decision thresholds, measured on bench/copydetect.py (hard negatives from real photographs) and the
# demo corpus; see bench/RESULTS.md, "Copy detection".
PATCH_NCC = 0.75  # a textured patch agrees when its aligned pixels correlate at least this well
PATCH_RMS = 0.25  # ... or when its pixels differ by at most this (global standard deviations)
PATCH_MEAN = 0.35  # ... and its local brightness differs by at most this (in global standard deviations)
TEXTURE = 0.12  # a patch is informative when its std exceeds this in either image (global std units)
MIN_COVERAGE = 0.97  # the contained image's content must be covered this much by the other's
FILL_TOLERANCE = (5, 5, 5, 5)  # grey levels a uniform border may vary by (JPEG noise)
FILL_STD = 1.5  # ... and their standard deviation at most
COPY_MATCH = 0.95  # share of informative patches that must agree for a copy
DERIVED_MATCH = 0.55  # ... for a derived image (a region or the colours changed)
COLOR_MATCH = 0.60  # colour agreement below this makes a pixel-identical pair derived (recoloured)
DETAIL_TRIGGER = 1.3  # look at fine detail when the contained image has this many times the pixels
DETAIL_RATIO = 1.3  # ... and call it another shot when its detail energy is this many times larger
DETAIL_SIDE = 384  # resolution (longest side) of that look
DETAIL_BLUR = 0.7  # before the Laplacian, so JPEG block noise is not mistaken for detail
COLOR_CELL = 8  # pixels (at the compared size) per cell when colours are compared
SATURATION_RANGE = 2.0  # a copy's saturation is at most this many times its source's, or at least 1/this
CHROMA_FLOOR = 8.0  # chroma (8-bit Lab units) below which colour differences are judged absolutely
SHADING_MIN = 0.95  # correlation of patch means below which the shading disagrees
MARK_AREA = 0.01  # a content region smaller than this share of the frame, on fill, is a mark (a letter)
MIN_TEMPLATE_MARKS = 2  # disagreeing textured patches each image must have on shared fill (other text)
SELF_SIMILAR = 0.98  # correlation with itself shifted by an eighth of the frame: no shift is pinned
ALONG_TEXTURE = 0.3  # ... then the texture along that axis must correlate this well, else it caps the match
MIN_INFORMATIVE = 12  # fewer informative patches than this: decided on the ink (pixels off the mean)
INK_Z = 1.0  # ... a pixel is ink when it lies this many global standard deviations from the mean
# A flat image (a plain colour, a blank page) has no texture to normalise: its pixels are compared as
# they are (a white and a black image agree everywhere once each is normalised by its own contrast).
FLAT_STD = 3.0  # grey levels: the contained region's pixels vary less than this in either image
FLAT_TOLERANCE = 12.0  # ... then a pixel agrees when its grey levels differ by at most this

# The cascade in front of the alignment (issue #24), every threshold set on the hard-negative
# benchmark's copies (bench/verify.py prints the margins): cheap decisive tiers first.
SAME_PIXELS_MEAN = 1.5  # same size, mean |difference| at most this (grey levels, luma and chroma) ...
SAME_PIXELS_TAIL = 16.0  # ... and 99.9 % of pixels within this: the same picture decoded, a copy
# Every covered alignment is first compared small (the contained image at COARSE_SIDE pixels, refined
# there: a fifth of the full comparison's cost) and only one whose pixels agree there at least
# COARSE_FLOOR is compared at full size. On the benchmark (bench/RESULTS.md, "The verification
# cascade") the lowest small match of an alignment that ended copy or derived was 0.333, while 78 % of
# the covered alignments of other photographs fell below 0.25. The unrefined match is no such
# predictor: refinement lifts a rotated copy from 0.05 to 1.0.
COARSE_SIDE = 64
COARSE_FLOOR = 0.25
# A keypoint fit this confident (inliers and inlier ratio, for the similarity fit and the affine one
# alike) pins the geometry of one orientation: when both fits say the contained image is not covered
# (overlapping views, a strip of a wider shot), no other alignment of that orientation is tried. Set
# on the benchmark and the 10k scaling set (bench/RESULTS.md, "Pinned overlaps"): no copy or derived
# pair of the hard-negative benchmark has both fits uncovered at any confidence, and on the scaling set
# the only copies with a confident straight fit that is uncovered are mirrored copies of symmetric
# content, which is why the rule is per orientation (the mirrored one is still tried).
PIN_INLIERS = 30
PIN_RATIO = 0.6

VERDICTS = ("copy", "derived", "distinct")
# How a pair was decided, cheapest first: the same decoded pixels; no plausible alignment at all (no
# keypoint fit, frames unlike); no alignment covers the contained image (geometry alone); the best
# alignment's pixels disagree already when compared small; the full comparison; an image that does not
# decode. "overlap": both orientations' confident keypoint fits pin a partial overlap (PIN_INLIERS).
TIERS = ("same-pixels", "overlap", "unaligned", "uncovered", "coarse", "aligned", "undecodable")


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
    tier: str = "unaligned"  # the cascade's tier that decided (TIERS)

    @property
    def score(self) -> float:
        """One number to rank alignments of one pair: covered, then agreeing pixels."""
        return min(self.coverage / MIN_COVERAGE, 1.0) + self.pixel_match


@dataclass
class Prepared:
    """One decoded image at the working resolution: gray for features, Lab for pixels and colour."""

    gray: np.ndarray  # (h, w) uint8, longest side SIDE
    lab: np.ndarray  # (h, w, 3) uint8: luma Y, then OpenCV's 8-bit Lab chroma (centred on 128)
    keypoints: tuple[np.ndarray, np.ndarray | None] | None = None  # ORB (points, descriptors), lazily
    mirrored: Prepared | None = None
    content: np.ndarray | None = None  # 1 on content, 0 on uniform fill (borders), lazily
    real_side: int = 0  # longest side of the decoded image, before normalisation
    data: bytes | None = None  # the encoded image, for a full-resolution look when needed
    flipped: bool = False
    quality: int | None = None  # estimated JPEG quality (None: not a JPEG)
    smaller: dict[int, Prepared] | None = None  # downscaled by 2**k for the small comparison, lazily


def prepare(data: bytes) -> Prepared | None:
    """Decode and normalise one image (``None`` when it cannot be decoded)."""
    img = _decode(data)
    if img is None:
        return None
    p = prepare_array(img)
    p.data = data
    p.quality = jpeg_quality(data)
    return p


def _decode(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None or img.size == 0 else img


def prepare_array(bgr: np.ndarray) -> Prepared:
    h, w = bgr.shape[:2]
    s = SIDE / max(h, w)
    if abs(s - 1) > 1e-3:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        bgr = cv2.resize(bgr, (max(8, round(w * s)), max(8, round(h * s))), interpolation=interp)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    # Pixels are compared on JPEG's own luma (Y = the grey image), which chroma subsampling leaves
    # alone; Lab's L mixes in the chroma that JPEG smears, shifting saturated regions.
    lab[..., 0] = gray
    return Prepared(gray, lab, real_side=max(h, w))


def _mirror(p: Prepared) -> Prepared:
    if p.mirrored is None:
        p.mirrored = Prepared(
            cv2.flip(p.gray, 1),
            cv2.flip(p.lab, 1),
            real_side=p.real_side,
            data=p.data,
            flipped=True,
            quality=p.quality,
        )
    return p.mirrored


class Features:
    """ORB keypoints per prepared image (one detector, reused)."""

    def __init__(self, nfeatures: int = 500) -> None:
        self._orb = cv2.ORB_create(nfeatures=nfeatures, fastThreshold=10, edgeThreshold=15, patchSize=15)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def compute(self, p: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        """(points, descriptors), computed once; set in one assignment, so a thread never sees
        points without their descriptors."""
        if p.keypoints is None:
            kp, des = self._orb.detectAndCompute(p.gray, None)
            p.keypoints = (np.float32([k.pt for k in kp]).reshape(-1, 2), des)
        return p.keypoints

    def matches(self, a: Prepared, b: Prepared) -> tuple[np.ndarray, np.ndarray] | None:
        """b's and a's points of the matches that pass the ratio test (None: fewer than 4)."""
        pa, da = self.compute(a)
        pb, db = self.compute(b)
        if da is None or db is None or len(pa) < 4 or len(pb) < 4:
            return None
        knn = self._matcher.knnMatch(db, da, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
        if len(good) < 4:
            return None
        return pb[[m.queryIdx for m in good]], pa[[m.trainIdx for m in good]]

    def fit(self, a: Prepared, b: Prepared, stretch: bool = False) -> tuple[np.ndarray | None, int, float]:
        """Similarity transform mapping b's pixels onto a's, its inlier count and inlier ratio; with
        ``stretch``, an affine one whose two axes may scale differently (a stretched copy)."""
        return fit_matches(self.matches(a, b), stretch)


def fit_matches(
    matched: tuple[np.ndarray, np.ndarray] | None, stretch: bool = False
) -> tuple[np.ndarray | None, int, float]:
    """Features.fit on matches already found (one matching serves the similarity and affine fits)."""
    if matched is None:
        return None, 0, 0.0
    src, dst = matched
    # RANSAC draws from OpenCV's per-thread RNG; reseeding per pair makes a pair's verdict
    # independent of how many pairs were checked before it (input order, resumed runs).
    cv2.setRNGSeed(RANSAC_SEED)
    estimate = cv2.estimateAffine2D if stretch else cv2.estimateAffinePartial2D
    m, mask = estimate(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    if m is None or mask is None:
        return None, 0, 0.0
    inliers = int(mask.sum())
    if not _plausible(m):
        return None, inliers, inliers / len(src)
    return m, inliers, inliers / len(src)


def _plausible(m: np.ndarray) -> bool:
    """A transform a copy can have undergone: a scale within SCALE_RANGE, a rotation of at most
    MAX_ROTATION_DEG, and (for an affine fit) axes stretched by at most MAX_STRETCH against each
    other with next to no shear; anything else is another view, not a copy."""
    sx, sy = math.hypot(m[0, 0], m[1, 0]), math.hypot(m[0, 1], m[1, 1])
    angle = abs(math.degrees(math.atan2(m[1, 0], m[0, 0])))
    shear = abs(m[0, 0] * m[0, 1] + m[1, 0] * m[1, 1]) / max(sx * sy, 1e-9)  # cosine between the axes
    return (
        SCALE_RANGE[0] <= math.sqrt(sx * sy) <= SCALE_RANGE[1]
        and angle <= MAX_ROTATION_DEG
        and max(sx, sy) / max(min(sx, sy), 1e-9) <= MAX_STRETCH
        and shear <= MAX_SHEAR
    )


def stretch(a: Prepared, b: Prepared) -> np.ndarray:
    """The transform that stretches b's frame onto a's (same content, other size or aspect)."""
    ha, wa = a.gray.shape
    hb, wb = b.gray.shape
    return np.array([[wa / wb, 0.0, 0.0], [0.0, ha / hb, 0.0]], dtype=np.float64)


def window(a: Prepared, b: Prepared) -> np.ndarray | None:
    """Where b sits inside a, as a transform (b -> a pixels), by multi-scale template matching: a
    lightly cropped copy of a smooth image has too few keypoints for a fit and is too far off for a
    whole-frame stretch. None when b cannot be a window of a (it is larger in both directions)."""
    ha, wa = a.gray.shape
    f = WINDOW_SIDE / max(ha, wa)
    big = cv2.resize(a.gray, (max(8, round(wa * f)), max(8, round(ha * f))), interpolation=cv2.INTER_AREA)
    hb, wb = b.gray.shape
    best, best_m = WINDOW_MIN_SCORE, None
    for r in WINDOW_SCALES:
        s = min(big.shape[1] * r / wb, big.shape[0] * r / hb)  # b's pixels -> big's
        tw, th = round(wb * s), round(hb * s)
        if tw < 8 or th < 8 or tw > big.shape[1] or th > big.shape[0]:
            continue
        small = cv2.resize(b.gray, (tw, th), interpolation=cv2.INTER_AREA)
        res = cv2.matchTemplate(big, small, cv2.TM_CCOEFF_NORMED)
        _, score, _, (x, y) = cv2.minMaxLoc(res)
        if score > best:
            k = 1.0 / f  # big's pixels -> a's
            best, best_m = score, np.array([[s * k, 0, x * k], [0, s * k, y * k]], dtype=np.float64)
    return best_m


def _invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def content_mask(gray: np.ndarray) -> np.ndarray:
    """1 where the image has content, 0 on uniform fill reached from its corners and edge midpoints
    (a border, letterbox bars, the corners a rotation leaves): fill is not content to cover."""
    h, w = gray.shape
    if not gray.flags.writeable:  # floodFill wants a writable image even when it only fills the mask
        gray = gray.copy()
    mask = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)
    fill = np.zeros((h, w), bool)
    for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, 0), (w // 2, h - 1),
                 (0, h // 2), (w - 1, h // 2)):  # fmt: skip
        if fill[y, x]:
            continue
        mask[:] = 0
        cv2.floodFill(gray, mask, (x, y), 0, FILL_TOLERANCE, FILL_TOLERANCE, flags)
        region = mask[1:-1, 1:-1].astype(bool)
        # fill is flat (a smooth wall or sky is not): its pixels barely vary
        if region.sum() >= 16 and gray[region].std() <= FILL_STD:
            fill |= region
    if fill.mean() > 0.6:  # a mostly flat image: its "fill" is its content
        return np.ones((h, w), np.uint8)
    return (~fill).astype(np.uint8)


def _content(p: Prepared) -> np.ndarray:
    if p.content is None:
        p.content = content_mask(p.gray)
    return p.content


def _coverage(m: np.ndarray, src: Prepared, dst: Prepared) -> float:
    """Share of the destination's content that lies inside the source's frame mapped through ``m``."""
    h, w = dst.gray.shape
    frame = np.ones(src.gray.shape, np.uint8)
    mask = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    own = _content(dst)
    return float((mask & own).sum() / max(1, own.sum()))


# Off (bench/verify.py, to measure the cascade's margins), no tier but "same-pixels" stops early:
# every alignment is refined and compared at full size, the full verifier's answers.
CASCADE = True


@dataclass(frozen=True)
class Match:
    """What one alignment shows: coverage, pixel and colour agreement, extra detail; ``tier`` the
    cascade's step that stopped."""

    coverage: float
    pixel_match: float = 0.0
    color_match: float = 0.0
    detail: float = 1.0
    tier: str = "aligned"


def compare(a: Prepared, b: Prepared, m: np.ndarray) -> Match:
    """b aligned onto a by ``m`` (b -> a pixels): coverage, then pixels, cheapest first.

    Pixels are compared in the frame of the *contained* image, so a small crop is compared at its
    own resolution rather than as a few pixels of the original. ``detail`` is how much more fine
    detail the contained image has than the region it matches (1 when it cannot have more). Early
    exits: an alignment that does not cover the contained image is never a copy (its pixels are not
    compared; refinement only lowers coverage); one whose pixels disagree when compared small
    (COARSE_SIDE) is not compared at full size.
    """
    cov_a = _coverage(m, b, a)
    inv = _invert(m)
    cov_b = _coverage(inv, a, b)
    # compare in the frame of whichever image is better covered (the contained one)
    if cov_b > cov_a:
        a, b, m, coverage, other = b, a, inv, cov_b, cov_a
    else:
        coverage, other = cov_a, cov_b
    if coverage < MIN_COVERAGE and CASCADE:
        return Match(coverage, tier="uncovered")
    if CASCADE:
        small, start = _aligned(a, b, m, coverage, other, COARSE_SIDE, detail=False)
        if small.pixel_match < COARSE_FLOOR:
            return Match(small.coverage, small.pixel_match, small.color_match, 1.0, "coarse")
        return _aligned(a, b, m, coverage, other, COMPARE_SIDE, detail=True, start=start)[0]
    return _aligned(a, b, m, coverage, other, COMPARE_SIDE, detail=True)[0]


def _aligned(
    a: Prepared,
    b: Prepared,
    m: np.ndarray,
    coverage: float,
    other: float,
    side: float,
    detail: bool,
    start: np.ndarray | None = None,
) -> tuple[Match, np.ndarray]:
    """The contained image ``a`` and b's pixels pulled onto it through the refinement of ``m``,
    compared at (at most) ``side`` pixels; also the refined alignment as a's pixels -> b's (``start``
    for a larger comparison: refined from there once, at full size, instead of from ``m``)."""
    h, w = a.gray.shape
    s = min(1.0, _common_side(a, b, m, side) / max(h, w))
    size = (max(PATCH, round(w * s)), max(PATCH, round(h * s)))
    scale = np.array([[s, 0, 0], [0, s, 0]], dtype=np.float64)
    m_small = scale @ np.vstack([m, [0, 0, 1]])
    la = cv2.resize(a.lab, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    content = cv2.resize(_content(a), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    warp = _invert(m_small)  # compared pixels -> b's
    from_compared = np.diag([1 / s, 1 / s, 1.0])  # compared pixels -> a's
    begin = None if start is None else start @ from_compared
    k = 0
    if not detail:
        # ECC's cost follows the image it searches, not the template: b at no more than twice the
        # compared resolution costs a fraction and loses nothing a small comparison can see
        k = _halvings(math.sqrt(abs(np.linalg.det(warp[:, :2]))))
        if k:
            b, warp = _smaller(b, k), warp / 2**k
    back = _refine(la[..., 0], b.lab[..., 0].astype(np.float32), warp, content, begin)
    refined = (back * 2**k) @ np.linalg.inv(from_compared)  # a's pixels -> b's (full size)
    return _match_at(a, b, la, content, back, size, coverage, other, detail), refined


def _halvings(b_per_compared: float) -> int:
    """How many times b can be halved (at most 2) and still hold at least 2 of its pixels per
    compared pixel."""
    k = 0
    while k < 2 and b_per_compared / 2 ** (k + 1) >= 2.0:
        k += 1
    return k


def _smaller(p: Prepared, k: int) -> Prepared:
    """``p`` halved ``k`` times (area-averaged), its content mask with it; cached on ``p``."""
    if p.smaller is None:
        p.smaller = {}
    if k not in p.smaller:
        h, w = p.gray.shape
        size = (max(8, round(w / 2**k)), max(8, round(h / 2**k)))
        p.smaller[k] = Prepared(
            cv2.resize(p.gray, size, interpolation=cv2.INTER_AREA),
            cv2.resize(p.lab, size, interpolation=cv2.INTER_AREA),
            content=cv2.resize(_content(p), size, interpolation=cv2.INTER_NEAREST),
            real_side=p.real_side,
            data=p.data,
            flipped=p.flipped,
            quality=p.quality,
        )
    return p.smaller[k]


def _match_at(
    a: Prepared,
    b: Prepared,
    la: np.ndarray,
    content: np.ndarray,
    back: np.ndarray,
    size: tuple[int, int],
    coverage: float,
    other: float,
    detail: bool = True,
) -> Match:
    """Coverage, pixel and colour agreement and extra detail of b's pixels pulled onto the contained
    image ``a`` (at the compared ``size``) through ``back`` (a's compared pixels -> b's pixels).
    Without ``detail`` (the small comparison) the checks that need fine texture are left out: they
    only ever lower a match, so leaving them out makes the small comparison more lenient, not less."""
    lab_b = b.lab.astype(np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    lb = cv2.warpAffine(lab_b, back, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpAffine(np.ones(b.gray.shape, np.float32), back, size, flags=flags, borderValue=0)
    valid = valid > 0.99
    # coverage under the refined alignment: a refinement that slid a repetitive pattern into place
    # (stripes, tiles, blinds) leaves part of the frame uncovered, which a copy never does
    edge = max(1, round(max(size) * 0.01))  # interpolation leaves the outermost pixel uncertain
    inner = np.zeros(content.shape, bool)
    inner[edge:-edge, edge:-edge] = True
    coverage = min(coverage, float((valid & content & inner).sum() / max(1, (content & inner).sum())))
    if valid.sum() < PATCH * PATCH:
        return Match(coverage)
    cmp_side = float(max(size))
    b_per_a = math.sqrt(abs(np.linalg.det(back[:, :2])))  # b's normalised pixels per compared pixel
    b_side = cmp_side * b_per_a * b.real_side / max(b.gray.shape)  # b's real pixels across a
    sigma = max(_blur(a, cmp_side, a.real_side), _blur(b, cmp_side, b_side))
    la = cv2.GaussianBlur(la, (0, 0), sigma)
    lb = cv2.GaussianBlur(lb, (0, 0), sigma)
    added, template = _fills(content, b, back, size)
    if added.any():  # the blur has spread the fill's brightness over the content's first pixels
        reach = 2 * math.ceil(2 * sigma) + 1
        added = cv2.dilate(added.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    own = valid & ~added
    if own.sum() >= PATCH * PATCH:
        valid = own
    if _flat(la[..., 0], valid) or _flat(lb[..., 0], valid):
        pixel = _flat_match(la[..., 0], lb[..., 0], valid)
    else:
        patch = max(PATCH, round(cmp_side / PATCHES_ACROSS))
        pixel = _pixel_match(la[..., 0], lb[..., 0], valid, template & valid, patch)
        if detail:  # fine texture along a stripe does not survive the small comparison: only at full size
            pixel = min(pixel, _pinned(la[..., 0], lb[..., 0], valid))
    # only a strict part of the other image can be a new shot of it (same framing: a rescale)
    strict_part = other < MIN_COVERAGE
    look = detail and pixel >= DERIVED_MATCH and strict_part
    extra = _extra_detail(a, b, back, max(size)) if look else 1.0
    return Match(coverage, pixel, _color_match(la, lb, valid), extra)


def _flat(y: np.ndarray, valid: np.ndarray) -> bool:
    """No texture to normalise: the region's grey levels vary by less than FLAT_STD."""
    return bool(y[valid].std() < FLAT_STD)


def _flat_match(ya: np.ndarray, yb: np.ndarray, valid: np.ndarray) -> float:
    """Share of pixels whose grey levels agree as they are: a plain white image is no copy of a plain
    black one, although each normalised by its own (zero) contrast is the same."""
    return float(np.mean(np.abs(ya[valid] - yb[valid]) <= FLAT_TOLERANCE))


def _pinned(ya: np.ndarray, yb: np.ndarray, valid: np.ndarray) -> float:
    """1, unless the contained image is nearly the same shifted by an eighth of its frame along an
    axis (stripes of a facade, a pole, a plain wall with one edge): then any shift along that axis
    agrees as well, so agreeing pixels do not show a copy: another part of the same structure agrees
    too. Only the texture along that axis (its derivative, where stripes contribute nothing) tells a
    copy, which shares it, from another tile of the structure, which does not: the pixel match is
    capped by that correlation when it is under ALONG_TEXTURE (the demo's tiles cut at other heights:
    0.0-0.08; their copies: 0.5-0.86)."""
    cap = 1.0
    h, w = ya.shape
    for axis, shift in ((0, h // 8), (1, w // 8)):
        if shift < 2:
            continue
        ahead, behind = [slice(None), slice(None)], [slice(None), slice(None)]
        ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
        both = valid[tuple(ahead)] & valid[tuple(behind)]
        if both.sum() < PATCH * PATCH:
            continue
        x, y = ya[tuple(ahead)][both], ya[tuple(behind)][both]
        if x.std() < 1e-3 or float(np.corrcoef(x, y)[0, 1]) < SELF_SIMILAR:
            continue
        da, db = np.diff(ya, axis=axis), np.diff(yb, axis=axis)
        ok = valid[1:, :] & valid[:-1, :] if axis == 0 else valid[:, 1:] & valid[:, :-1]
        if ok.sum() < PATCH * PATCH or da[ok].std() < 1e-6 or db[ok].std() < 1e-6:
            return 0.0
        along = float(np.corrcoef(da[ok], db[ok])[0, 1])
        if along < ALONG_TEXTURE:
            cap = min(cap, max(0.0, along))
    return cap


def _fills(
    content: np.ndarray, b: Prepared, back: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(added, template) masks in the compared frame, from the uniform fill of both images.

    ``added``: the contained image's fill regions (a border, letterbox bars, a rotation's corners)
    that lie over the other image's content: padding added around a crop, where the other image
    shows what the crop cut away. Comparing those pixels, or letting the fill into the brightness
    normalisation, would reject a bordered crop of a copy.

    ``template``: where both images are fill or small marks on it (:func:`_template`): the bands of a
    meme, a template's frame. Fill over fill is part of both pictures and is compared as usual; what
    is drawn there is the content of a template.
    """
    fill = (~content).astype(np.uint8)
    if not fill.any():
        empty = np.zeros(content.shape, bool)
        return empty, empty
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    other = cv2.warpAffine(_content(b), back, size, flags=flags, borderValue=1).astype(bool)
    n, labels = cv2.connectedComponents(fill, connectivity=4)
    over = np.bincount(labels.ravel(), weights=other.ravel(), minlength=n)
    area = np.bincount(labels.ravel(), minlength=n)
    is_added = over > 0.5 * area
    is_added[0] = False  # label 0: content
    added = is_added[labels]
    other_template = cv2.warpAffine(
        _template(_content(b)).astype(np.uint8), back, size, flags=flags, borderValue=0
    )
    template = _template(content) & other_template.astype(bool) & ~added
    return added, template


def _template(content: np.ndarray) -> np.ndarray:
    """Fill and the small marks on it: content regions under MARK_AREA of the frame, such as the
    letters of a caption drawn on a band. The picture itself, and the edge where fill meets it
    (two frames' fills end in different places: a rotation's corners, a border), are not marks."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(content.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < MARK_AREA * content.size
    small[0] = True  # label 0: the fill itself
    return small[labels]


def _common_side(a: Prepared, b: Prepared, m: np.ndarray, limit: float = COMPARE_SIDE) -> float:
    """The longest side, in pixels, at which both images really hold ``a``'s content: a copy shrunk
    to 80 pixels is compared with its original at 80 pixels, not at an upsampled 128."""
    side = float(limit)
    if a.real_side:
        side = min(side, a.real_side)
    if b.real_side:
        b_per_a = math.sqrt(abs(np.linalg.det(_invert(m)[:, :2])))  # b's normalised px per a's
        region = max(a.gray.shape) * b_per_a * b.real_side / max(b.gray.shape)
        side = min(side, region)
    return max(side, min(MIN_COMPARE_SIDE, limit))


def _full_gray(p: Prepared, side: int) -> np.ndarray | None:
    """The image at (at most) ``side`` pixels on its longest side, from its bytes."""
    img = _decode(p.data) if p.data is not None else None
    if img is None:
        return None
    if p.flipped:
        img = cv2.flip(img, 1)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    s = side / max(h, w)
    if s < 1:
        gray = cv2.resize(gray, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    return gray


def _extra_detail(a: Prepared, b: Prepared, back: np.ndarray, compare_side: int) -> float:
    """Fine-detail energy of the contained image ``a`` over that of the matching region of ``b``,
    both at ``a``'s own resolution; 1 when ``b`` holds as many real pixels there as ``a``.

    A crop, however upscaled, cannot hold detail its source lacks; a zoomed-in photograph of the
    same scene from the same spot does, while at the wide shot's resolution it matches pixel for
    pixel (up to whatever moved)."""
    if not a.real_side or not b.real_side or a.data is None or b.data is None:
        return 1.0
    b_norm_side = max(b.gray.shape)
    s_ab = math.sqrt(abs(np.linalg.det(back[:, :2])))  # b's normalised pixels per compared pixel
    real_b_per_real_a = s_ab * (b.real_side / b_norm_side) / (a.real_side / compare_side)
    if real_b_per_real_a * DETAIL_TRIGGER >= 1.0:
        return 1.0
    side = min(a.real_side, DETAIL_SIDE)
    ga = _full_gray(a, side)
    gb = _full_gray(b, b.real_side)
    if ga is None or gb is None:
        return 1.0
    # a's pixels at this size -> compared pixels -> b's normalised pixels -> b's full pixels
    to_cmp = compare_side / max(ga.shape)
    to_full = b.real_side / b_norm_side
    m = np.vstack([back, [0, 0, 1]]) @ np.diag([to_cmp, to_cmp, 1.0])
    m = (np.diag([to_full, to_full, 1.0]) @ m)[:2]
    h, w = ga.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    wb = cv2.warpAffine(gb.astype(np.float32), m, (w, h), flags=flags)
    valid = cv2.warpAffine(np.ones(gb.shape, np.float32), m, (w, h), flags=flags) > 0.99
    valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if valid.sum() < 256:
        return 1.0

    def energy(x: np.ndarray) -> float:
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), DETAIL_BLUR)
        return float(np.abs(cv2.Laplacian(x, cv2.CV_32F))[valid].mean())

    return energy(ga) / max(energy(wb), 1e-3)


def _refine(
    template: np.ndarray,
    image: np.ndarray,
    warp: np.ndarray,
    content: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Sub-pixel refinement of an alignment (ECC, affine): a keypoint fit is off by a pixel or two,
    enough to decorrelate fine texture, and a whole-frame stretch is off by the crop of a lightly
    cropped copy. ECC is run at full size and coarse to fine; the better-correlated result wins, and
    one that moved a corner by more than ECC_MAX_SHIFT of the frame (it found something else) is
    dropped, keeping the fit. Only the template's ``content`` is matched: its fill (a border, a
    rotation's corners) has no counterpart in the other image and would pull the alignment off."""
    side = max(template.shape)
    scale_b = math.sqrt(abs(np.linalg.det(warp[:, :2])))  # image pixels per template pixel
    limit = ECC_MAX_SHIFT * side * scale_b
    corners = np.array([[0, 0, 1], [template.shape[1], 0, 1], [0, template.shape[0], 1],
                        [template.shape[1], template.shape[0], 1]], np.float64).T  # fmt: skip
    best, best_cc = (warp if start is None else start), -1.0
    # from a smaller comparison's refinement (``start``), one pass at full size; else two from ``warp``
    tries = [(start, (1.0,))] if start is not None else [(warp, (1.0,)), (warp, ECC_LEVELS)]
    for initial, levels in tries:
        w, cc = _ecc(template, image, initial, levels, content)
        if cc > best_cc and np.abs((w - warp) @ corners).max() <= limit:
            best, best_cc = w, cc
    return best


def _ecc(
    template: np.ndarray,
    image: np.ndarray,
    warp: np.ndarray,
    levels: tuple[float, ...],
    content: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """ECC through the given template scales; (warp, correlation of the last level run)."""
    w, cc = warp.astype(np.float64), -1.0
    image = image.astype(np.float32)
    for f in levels:
        small = template if f == 1.0 else cv2.resize(template, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        if min(small.shape) < 16:
            continue
        mask = None
        if content is not None and not content.all():
            mask = cv2.resize(content.astype(np.uint8), small.shape[::-1], interpolation=cv2.INTER_NEAREST)
        scale = np.diag([1 / f, 1 / f, 1.0])
        w_level = (np.vstack([w, [0, 0, 1]]) @ scale)[:2].astype(np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, 1e-4)
        try:
            if mask is not None:  # OpenCV >= 4.13 (pyproject's floor)
                # (findTransformECC's own mask is the *input's*, in the input's coordinates)
                cc, w_level = cv2.findTransformECCWithMask(
                    small.astype(np.float32), image, mask, None, w_level, cv2.MOTION_AFFINE, criteria, 3
                )
            else:
                cc, w_level = cv2.findTransformECC(
                    small.astype(np.float32), image, w_level, cv2.MOTION_AFFINE, criteria, None, 3
                )
        except cv2.error:
            return warp.astype(np.float64), -1.0
        w = (np.vstack([w_level.astype(np.float64), [0, 0, 1]]) @ np.linalg.inv(scale))[:2]
    return w, float(cc)


def jpeg_quality(data: bytes) -> int | None:
    """libjpeg quality (1-100) estimated from the luminance quantisation table; None if not a JPEG."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None)
        if not tables:
            return None
        table = np.asarray(tables[min(tables)], dtype=np.float64)
    except Exception:
        return None
    scale = 100.0 * table.mean() / _STD_LUMA.mean()
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64
)  # fmt: skip


def _blur(p: Prepared, compare_side: float, own_side: float) -> float:
    """Blur (in compared pixels) that hides ``p``'s JPEG blocks: strong compression leaves 8-pixel
    blocks and ringing that no copy shares with its original."""
    q = p.quality
    if q is None or q >= 85 or not own_side:
        return BLUR_SIGMA
    strength = 0.15 if q >= 60 else 0.25 if q >= 40 else 0.35
    return max(BLUR_SIGMA, strength * 8 * compare_side / own_side)


def _pixel_match(
    ya: np.ndarray, yb: np.ndarray, valid: np.ndarray, template: np.ndarray | None = None, patch: int = PATCH
) -> float:
    """Share of informative patches whose pixels agree, after global brightness/contrast normalisation.

    Where both images are uniform fill (``template``: a meme's bands, a product template's frame) and
    *each* has marks there that the other lacks, the template carries different content (other text,
    another product): the share is then at most the agreement over the template's informative
    patches, however small the template is. A copy with a caption added has marks on the fill in one
    image only, so it is judged as before.
    """
    za = (ya - ya[valid].mean()) / (ya[valid].std() + 1e-3)
    zb = (yb - yb[valid].mean()) / (yb[valid].std() + 1e-3)
    h, w = za.shape
    ph, pw = h // patch, w // patch
    if ph == 0 or pw == 0:
        return 0.0

    def blocks(x: np.ndarray) -> np.ndarray:
        return x[: ph * patch, : pw * patch].reshape(ph, patch, pw, patch).transpose(0, 2, 1, 3)

    va = blocks(valid.astype(np.float32)).mean(axis=(2, 3)) > 0.95
    ba, bb = blocks(za), blocks(zb)
    ma, mb = ba.mean(axis=(2, 3)), bb.mean(axis=(2, 3))
    sa, sb = ba.std(axis=(2, 3)), bb.std(axis=(2, 3))
    cov = ((ba - ma[..., None, None]) * (bb - mb[..., None, None])).mean(axis=(2, 3))
    ncc = cov / (np.maximum(sa, TEXTURE / 2) * np.maximum(sb, TEXTURE / 2))
    informative = va & (np.maximum(sa, sb) > TEXTURE)
    # a patch agrees when its pixels correlate, or when they differ by no more than compression
    # noise (a faint texture's correlation is the noise's, not the content's)
    rms = np.sqrt(((ba - bb) ** 2).mean(axis=(2, 3)))
    # compression also shifts a high-contrast patch's mean a little: allow half its contrast there
    mean_ok = np.abs(ma - mb) <= np.maximum(PATCH_MEAN, 0.5 * np.maximum(sa, sb) * (ncc >= 0.9))
    agree = ((ncc >= PATCH_NCC) | (rms <= PATCH_RMS)) & mean_ok
    # flat in both but at different brightness: the content there differs (a product on a template)
    flat_differs = va & ~informative & (np.abs(ma - mb) > PATCH_MEAN)
    counted = int(informative.sum() + flat_differs.sum())
    if int(informative.sum()) < MIN_INFORMATIVE:
        # too little texture for patches to decide: the ink (pixels well off the mean: the letters on a
        # blank page, a smooth image's highlights) must agree pixel by pixel; over the whole overlap,
        # the blank paper of two pages with other words would agree
        ink = valid & ((np.abs(za) > INK_Z) | (np.abs(zb) > INK_Z))
        region = ink if ink.sum() >= PATCH * PATCH else valid
        share = float(np.mean(np.abs(za[region] - zb[region]) <= PATCH_MEAN))
    else:
        share = float((agree & informative).sum() / counted)
    if template is not None and template.any():
        on_template = va & (blocks(template.astype(np.float32)).mean(axis=(2, 3)) > 0.9)
        differs = on_template & ~agree
        own_a = int((differs & (sa > TEXTURE)).sum())
        own_b = int((differs & (sb > TEXTURE)).sum())
        if min(own_a, own_b) >= MIN_TEMPLATE_MARKS:
            marked = on_template & informative
            share = min(share, float((agree & marked).sum() / max(1, int(marked.sum()))))
    # the shading (patch means across the frame) must agree too: look-alike tiles of one repetitive
    # structure share their edges but not their light
    cells = va.ravel()
    if cells.sum() >= 4:
        x, y = ma.ravel()[cells], mb.ravel()[cells]
        shading = float(np.corrcoef(x, y)[0, 1]) if x.std() > 1e-6 and y.std() > 1e-6 else 1.0
        if shading < SHADING_MIN:
            share = min(share, shading)
    return share


def _color_match(la: np.ndarray, lb: np.ndarray, valid: np.ndarray) -> float:
    """1 when the chroma agree (up to a saturation change), toward 0 for a recolour.

    Compared on coarse cells (JPEG subsamples and smears chroma, a recolour moves it everywhere),
    and relative to at least ``CHROMA_FLOOR`` so the faint chroma of a near-grey image is not
    judged by its compression noise. Grey images agree; one grey and one coloured image do not.
    """
    cells = (max(1, la.shape[1] // COLOR_CELL), max(1, la.shape[0] // COLOR_CELL))
    weight = cv2.resize(valid.astype(np.float32), cells, interpolation=cv2.INTER_AREA)
    keep = weight > 0.99
    if not keep.any():
        return 1.0
    ca = cv2.resize(la[..., 1:] * valid[..., None], cells, interpolation=cv2.INTER_AREA)[keep] - 128.0
    cb = cv2.resize(lb[..., 1:] * valid[..., None], cells, interpolation=cv2.INTER_AREA)[keep] - 128.0
    na, nb = float(np.abs(ca).mean()), float(np.abs(cb).mean())
    if max(na, nb) < 3.0:
        return 1.0

    # each way round (the verdict must not depend on which image is ``a``): the best saturation
    # scale for one from the other, within what a copy's contrast change does, then the residual
    # relative to the chroma present; a scale near 0 would make any grey image "agree"
    def agreement(x: np.ndarray, y: np.ndarray) -> float:
        s = float(np.clip((x * y).sum() / ((x * x).sum() + 1e-6), 1 / SATURATION_RANGE, SATURATION_RANGE))
        return 1.0 - float(np.abs(y - s * x).mean()) / max(na, nb, CHROMA_FLOOR)

    return float(max(0.0, min(agreement(ca, cb), agreement(cb, ca))))


def verdict(coverage: float, pixel_match: float, color_match: float, detail: float = 1.0) -> str:
    if coverage < MIN_COVERAGE or detail > DETAIL_RATIO:
        return "distinct"
    if pixel_match >= COPY_MATCH:
        return "copy" if color_match >= COLOR_MATCH else "derived"
    if pixel_match >= DERIVED_MATCH:
        return "derived"
    return "distinct"


def examine(
    a: Prepared,
    b: Prepared,
    features: Features,
    min_inliers: int = MIN_FIT_INLIERS,
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
    top_inliers, top_ratio = 0, 0.0
    for mirrored in (False, True):
        bb = _mirror(b) if mirrored else b
        suffix = "-mirrored" if mirrored else ""
        matched = features.matches(a, bb)
        m, inliers, ratio = fit_matches(matched)
        if CASCADE:
            pinned = _pinned_apart(a, bb, (m, inliers, ratio), matched, suffix)
            if pinned is not None:
                best = pinned if pinned.score > best.score else best
                top_inliers, top_ratio = max((top_inliers, top_ratio), (inliers, ratio))
                continue
        if stretch_first:
            e = _evidence(a, bb, stretch(a, bb), "stretch" + suffix, top_inliers, top_ratio)
            best = e if e.score > best.score else best
            if _settled(best):
                break
        if window_search:
            # a light crop of a smooth image: find the window by template matching, either way round
            for m_win in (window(a, bb), _inverse_or_none(window(bb, a))):
                if m_win is not None:
                    e = _evidence(a, bb, m_win, "window" + suffix, top_inliers, top_ratio)
                    best = e if e.score > best.score else best
            if _settled(best):
                break
        if inliers > top_inliers:
            top_inliers, top_ratio = inliers, ratio
        if m is not None and inliers >= min_inliers:
            e = _evidence(a, bb, m, "orb" + suffix, inliers, ratio)
            best = e if e.score > best.score else best
            if _settled(best):
                break
        worth = best.pixel_match >= DERIVED_MATCH or inliers >= STRETCH_FIT_INLIERS
        if inliers >= min_inliers and not _settled(best) and worth:
            # a stretched copy (another aspect ratio, perhaps also reframed) is no similarity, but
            # one nearly agrees or many keypoints match: fit each axis its own scale from the same
            # matches, and try the whole-frame stretch
            tries = [(fit_matches(matched, stretch=True), "orb-stretch" + suffix)]
            if not stretch_first:
                tries.append(((stretch(a, bb), inliers, ratio), "stretch" + suffix))
            for (m_s, n_s, r_s), name in tries:
                if m_s is not None:
                    e = _evidence(a, bb, m_s, name, n_s, r_s)
                    best = e if e.score > best.score else best
            if _settled(best):
                break
    if not best.alignment.startswith("orb"):
        # report the keypoint evidence that was gathered, even when the stretch aligned better
        best = Evidence(**{**best.__dict__, "inliers": top_inliers, "inlier_ratio": top_ratio})
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
    if m is None or inliers < PIN_INLIERS or ratio < PIN_RATIO:
        return None
    coverage = _contained_coverage(m, a, b)
    if coverage >= MIN_COVERAGE:
        return None
    m_s, n_s, r_s = fit_matches(matched, stretch=True)
    if m_s is None or n_s < PIN_INLIERS or r_s < PIN_RATIO or _contained_coverage(m_s, a, b) >= MIN_COVERAGE:
        return None
    return Evidence(inliers=inliers, inlier_ratio=ratio, coverage=coverage, alignment="orb" + suffix,
                    tier="overlap")  # fmt: skip


def _contained_coverage(m: np.ndarray, a: Prepared, b: Prepared) -> float:
    """Coverage of whichever image ``m`` (b -> a) places inside the other (compare's choice)."""
    return max(_coverage(m, b, a), _coverage(_invert(m), a, b))


def _settled(best: Evidence) -> bool:
    """No other alignment can change the verdict: a copy, or (with the cascade) a recolour: covered,
    its pixels agree as a copy's do and only the colours disagree. The colours are the pair's, not
    the alignment's, so the remaining alignments (each refined and compared at full size: what a
    recoloured crop costs) are not tried."""
    if best.verdict == "copy":
        return True
    return CASCADE and best.verdict == "derived" and best.pixel_match >= COPY_MATCH


def _inverse_or_none(m: np.ndarray | None) -> np.ndarray | None:
    return None if m is None else _invert(m)


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
    if float(diff.mean()) > SAME_PIXELS_MEAN:
        return None
    # the tail: 99.9 % of pixel values within SAME_PIXELS_TAIL (a changed region is not a copy)
    if float(np.count_nonzero(diff > SAME_PIXELS_TAIL)) > 0.001 * diff.size:
        return None
    return Evidence(coverage=1.0, pixel_match=1.0, color_match=1.0, alignment="same-pixels",
                    verdict="copy", tier="same-pixels")  # fmt: skip


class CopyVerifier:
    """Evidence for pairs of images held by integer id: bytes are kept, decoded images are cached
    (most recently used first), keypoints computed once per decoded image."""

    def __init__(self, min_inliers: int = MIN_FIT_INLIERS, cache: int = 4096) -> None:
        self.min_inliers = min_inliers
        self._bytes: dict[int, bytes] = {}
        self._prepared: OrderedDict[int, Prepared | None] = OrderedDict()
        self._cache = cache
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
            self._prepared[row] = p
            if len(self._prepared) > self._cache:
                self._prepared.popitem(last=False)
        return p

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
