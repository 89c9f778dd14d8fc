"""The copy verifier's geometry: images decoded and normalised (Prepared), ORB keypoint fits, the
whole-frame stretch and template windows as candidate placements, content masks (fill is not
content), coverage of one image by another, and the ECC refinement of a placement.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np

from dedup.cluster import verifier_settings as S

Keypoints = tuple[np.ndarray, np.ndarray | None]  # ORB points (n, 2) and descriptors (n, 32)


@dataclass
class Prepared:
    """One decoded image at the working resolution: gray for features, Lab for pixels and colour."""

    gray: np.ndarray  # (h, w) uint8, longest side SIDE
    lab: np.ndarray  # (h, w, 3) uint8: luma Y, then OpenCV's 8-bit Lab chroma (centred on 128)
    keypoints: Keypoints | None = None  # ORB (points, descriptors), lazily
    mirrored: Prepared | None = None
    content: np.ndarray | None = None  # 1 on content, 0 on uniform fill (borders), lazily
    real_side: int = 0  # longest side of the decoded image, before normalisation
    data: bytes | None = None  # the encoded image, for a full-resolution look when needed
    flipped: bool = False
    quality: int | None = None  # estimated JPEG quality (None: not a JPEG)
    smaller: dict[int, Prepared] | None = None  # downscaled by 2**k for the small comparison, lazily


def prepare(data: bytes) -> Prepared | None:
    """Decode and normalise one image (``None`` when it cannot be decoded)."""
    img = decode(data)
    if img is None:
        return None
    p = prepare_array(img)
    p.data = data
    p.quality = jpeg_quality(data)
    return p


def decode(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None or img.size == 0 else img


def prepare_array(bgr: np.ndarray) -> Prepared:
    h, w = bgr.shape[:2]
    s = S.SIDE / max(h, w)
    if abs(s - 1) > 1e-3:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        bgr = cv2.resize(bgr, (max(8, round(w * s)), max(8, round(h * s))), interpolation=interp)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    # Pixels are compared on JPEG's own luma (Y = the grey image), which chroma subsampling leaves
    # alone; Lab's L mixes in the chroma that JPEG smears, shifting saturated regions.
    lab[..., 0] = gray
    return Prepared(gray, lab, real_side=max(h, w))


def mirror_of(p: Prepared) -> Prepared:
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

    def compute(self, p: Prepared) -> Keypoints:
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
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < S.RATIO * m[1].distance]
        if len(good) < 4:
            return None
        return pb[[m.queryIdx for m in good]], pa[[m.trainIdx for m in good]]


def fit_matches(
    matched: tuple[np.ndarray, np.ndarray] | None, stretch: bool = False
) -> tuple[np.ndarray | None, int, float]:
    """Similarity transform mapping b's pixels onto a's (from ``Features.matches``), its inlier count
    and inlier ratio; with ``stretch``, an affine one whose two axes may scale differently (a
    stretched copy). One matching serves both fits."""
    if matched is None:
        return None, 0, 0.0
    src, dst = matched
    # RANSAC draws from OpenCV's per-thread RNG; reseeding per pair makes a pair's verdict
    # independent of how many pairs were checked before it (input order, resumed runs).
    cv2.setRNGSeed(S.RANSAC_SEED)
    estimate = cv2.estimateAffine2D if stretch else cv2.estimateAffinePartial2D
    m, mask = estimate(src, dst, method=cv2.RANSAC, ransacReprojThreshold=S.RANSAC_PX)
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
        S.SCALE_RANGE[0] <= math.sqrt(sx * sy) <= S.SCALE_RANGE[1]
        and angle <= S.MAX_ROTATION_DEG
        and max(sx, sy) / max(min(sx, sy), 1e-9) <= S.MAX_STRETCH
        and shear <= S.MAX_SHEAR
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
    f = S.WINDOW_SIDE / max(ha, wa)
    big = cv2.resize(a.gray, (max(8, round(wa * f)), max(8, round(ha * f))), interpolation=cv2.INTER_AREA)
    hb, wb = b.gray.shape
    best, best_m = S.WINDOW_MIN_SCORE, None
    for r in S.WINDOW_SCALES:
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


def invert(m: np.ndarray) -> np.ndarray:
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
        cv2.floodFill(gray, mask, (x, y), 0, S.FILL_TOLERANCE, S.FILL_TOLERANCE, flags)
        region = mask[1:-1, 1:-1].astype(bool)
        # fill is flat (a smooth wall or sky is not): its pixels barely vary
        if region.sum() >= 16 and gray[region].std() <= S.FILL_STD:
            fill |= region
    if fill.mean() > 0.6:  # a mostly flat image: its "fill" is its content
        return np.ones((h, w), np.uint8)
    return (~fill).astype(np.uint8)


def content_of(p: Prepared) -> np.ndarray:
    if p.content is None:
        p.content = content_mask(p.gray)
    return p.content


def coverage_of(m: np.ndarray, src: Prepared, dst: Prepared) -> float:
    """Share of the destination's content that lies inside the source's frame mapped through ``m``."""
    h, w = dst.gray.shape
    frame = np.ones(src.gray.shape, np.uint8)
    mask = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    own = content_of(dst)
    return float((mask & own).sum() / max(1, own.sum()))


def fills(
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
    other = cv2.warpAffine(content_of(b), back, size, flags=flags, borderValue=1).astype(bool)
    n, labels = cv2.connectedComponents(fill, connectivity=4)
    over = np.bincount(labels.ravel(), weights=other.ravel(), minlength=n)
    area = np.bincount(labels.ravel(), minlength=n)
    is_added = over > 0.5 * area
    is_added[0] = False  # label 0: content
    added = is_added[labels]
    other_template = cv2.warpAffine(
        template_mask(content_of(b)).astype(np.uint8), back, size, flags=flags, borderValue=0
    )
    template = template_mask(content) & other_template.astype(bool) & ~added
    return added, template


def template_mask(content: np.ndarray) -> np.ndarray:
    """Fill and the small marks on it: content regions under MARK_AREA of the frame, such as the
    letters of a caption drawn on a band. The picture itself, and the edge where fill meets it
    (two frames' fills end in different places: a rotation's corners, a border), are not marks."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(content.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < S.MARK_AREA * content.size
    small[0] = True  # label 0: the fill itself
    return small[labels]


def refine(
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
    limit = S.ECC_MAX_SHIFT * side * scale_b
    corners = np.array([[0, 0, 1], [template.shape[1], 0, 1], [0, template.shape[0], 1],
                        [template.shape[1], template.shape[0], 1]], np.float64).T  # fmt: skip
    best, best_cc = (warp if start is None else start), -1.0
    # from a smaller comparison's refinement (``start``), one pass at full size; else two from ``warp``
    tries = [(start, (1.0,))] if start is not None else [(warp, (1.0,)), (warp, S.ECC_LEVELS)]
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
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, S.ECC_ITERATIONS, 1e-4)
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


def contained_coverage(m: np.ndarray, a: Prepared, b: Prepared) -> float:
    """Coverage of whichever image ``m`` (b -> a) places inside the other (compare's choice)."""
    return max(coverage_of(m, b, a), coverage_of(invert(m), a, b))
