"""The copy verifier's pixel comparison: b's pixels pulled onto the contained image through a
refined placement, then coverage, patch agreement, colour agreement and fine detail (Match). The
cascade's small comparison (COARSE_SIDE) runs first and stops most placements of other photographs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dedup.cluster import verifier_settings as S
from dedup.cluster.geometry import Prepared, content_of, coverage_of, decode, fills, invert, refine


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
    cov_a = coverage_of(m, b, a)
    inv = invert(m)
    cov_b = coverage_of(inv, a, b)
    # compare in the frame of whichever image is better covered (the contained one)
    if cov_b > cov_a:
        a, b, m, coverage, other = b, a, inv, cov_b, cov_a
    else:
        coverage, other = cov_a, cov_b
    if coverage < S.MIN_COVERAGE and S.CASCADE:
        return Match(coverage, tier="uncovered")
    if S.CASCADE:
        small, start = _aligned(a, b, m, coverage, other, S.COARSE_SIDE, detail=False)
        if small.pixel_match < S.COARSE_FLOOR:
            return Match(small.coverage, small.pixel_match, small.color_match, 1.0, "coarse")
        return _aligned(a, b, m, coverage, other, S.COMPARE_SIDE, detail=True, start=start)[0]
    return _aligned(a, b, m, coverage, other, S.COMPARE_SIDE, detail=True)[0]


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
    size = (max(S.PATCH, round(w * s)), max(S.PATCH, round(h * s)))
    scale = np.array([[s, 0, 0], [0, s, 0]], dtype=np.float64)
    m_small = scale @ np.vstack([m, [0, 0, 1]])
    la = cv2.resize(a.lab, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    content = cv2.resize(content_of(a), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    warp = invert(m_small)  # compared pixels -> b's
    from_compared = np.diag([1 / s, 1 / s, 1.0])  # compared pixels -> a's
    begin = None if start is None else start @ from_compared
    k = 0
    if not detail:
        # ECC's cost follows the image it searches, not the template: b at no more than twice the
        # compared resolution costs a fraction and loses nothing a small comparison can see
        k = _halvings(math.sqrt(abs(np.linalg.det(warp[:, :2]))))
        if k:
            b, warp = _smaller(b, k), warp / 2**k
    back = refine(la[..., 0], b.lab[..., 0].astype(np.float32), warp, content, begin)
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
            content=cv2.resize(content_of(p), size, interpolation=cv2.INTER_NEAREST),
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
    if valid.sum() < S.PATCH * S.PATCH:
        return Match(coverage)
    cmp_side = float(max(size))
    b_per_a = math.sqrt(abs(np.linalg.det(back[:, :2])))  # b's normalised pixels per compared pixel
    b_side = cmp_side * b_per_a * b.real_side / max(b.gray.shape)  # b's real pixels across a
    sigma = max(_blur(a, cmp_side, a.real_side), _blur(b, cmp_side, b_side))
    la = cv2.GaussianBlur(la, (0, 0), sigma)
    lb = cv2.GaussianBlur(lb, (0, 0), sigma)
    added, template = fills(content, b, back, size)
    if added.any():  # the blur has spread the fill's brightness over the content's first pixels
        reach = 2 * math.ceil(2 * sigma) + 1
        added = cv2.dilate(added.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    own = valid & ~added
    if own.sum() >= S.PATCH * S.PATCH:
        valid = own
    if _flat(la[..., 0], valid) or _flat(lb[..., 0], valid):
        pixel = _flat_match(la[..., 0], lb[..., 0], valid)
    else:
        patch = max(S.PATCH, round(cmp_side / S.PATCHES_ACROSS))
        pixel = _pixel_match(la[..., 0], lb[..., 0], valid, template & valid, patch)
        if detail:  # fine texture along a stripe does not survive the small comparison: only at full size
            pixel = min(pixel, _pinned(la[..., 0], lb[..., 0], valid))
    # only a strict part of the other image can be a new shot of it (same framing: a rescale)
    strict_part = other < S.MIN_COVERAGE
    look = detail and pixel >= S.DERIVED_MATCH and strict_part
    extra = _extra_detail(a, b, back, max(size)) if look else 1.0
    return Match(coverage, pixel, _color_match(la, lb, valid), extra)


def _flat(y: np.ndarray, valid: np.ndarray) -> bool:
    """No texture to normalise: the region's grey levels vary by less than FLAT_STD."""
    return bool(y[valid].std() < S.FLAT_STD)


def _flat_match(ya: np.ndarray, yb: np.ndarray, valid: np.ndarray) -> float:
    """Share of pixels whose grey levels agree as they are: a plain white image is no copy of a plain
    black one, although each normalised by its own (zero) contrast is the same."""
    return float(np.mean(np.abs(ya[valid] - yb[valid]) <= S.FLAT_TOLERANCE))


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
        if both.sum() < S.PATCH * S.PATCH:
            continue
        x, y = ya[tuple(ahead)][both], ya[tuple(behind)][both]
        if x.std() < 1e-3 or float(np.corrcoef(x, y)[0, 1]) < S.SELF_SIMILAR:
            continue
        da, db = np.diff(ya, axis=axis), np.diff(yb, axis=axis)
        ok = valid[1:, :] & valid[:-1, :] if axis == 0 else valid[:, 1:] & valid[:, :-1]
        if ok.sum() < S.PATCH * S.PATCH or da[ok].std() < 1e-6 or db[ok].std() < 1e-6:
            return 0.0
        along = float(np.corrcoef(da[ok], db[ok])[0, 1])
        if along < S.ALONG_TEXTURE:
            cap = min(cap, max(0.0, along))
    return cap


def _common_side(a: Prepared, b: Prepared, m: np.ndarray, limit: float = S.COMPARE_SIDE) -> float:
    """The longest side, in pixels, at which both images really hold ``a``'s content: a copy shrunk
    to 80 pixels is compared with its original at 80 pixels, not at an upsampled 128."""
    side = float(limit)
    if a.real_side:
        side = min(side, a.real_side)
    if b.real_side:
        b_per_a = math.sqrt(abs(np.linalg.det(invert(m)[:, :2])))  # b's normalised px per a's
        region = max(a.gray.shape) * b_per_a * b.real_side / max(b.gray.shape)
        side = min(side, region)
    return max(side, min(S.MIN_COMPARE_SIDE, limit))


def _full_gray(p: Prepared, side: int) -> np.ndarray | None:
    """The image at (at most) ``side`` pixels on its longest side, from its bytes."""
    img = decode(p.data) if p.data is not None else None
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
    if real_b_per_real_a * S.DETAIL_TRIGGER >= 1.0:
        return 1.0
    side = min(a.real_side, S.DETAIL_SIDE)
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
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), S.DETAIL_BLUR)
        return float(np.abs(cv2.Laplacian(x, cv2.CV_32F))[valid].mean())

    return energy(ga) / max(energy(wb), 1e-3)


def _blur(p: Prepared, compare_side: float, own_side: float) -> float:
    """Blur (in compared pixels) that hides ``p``'s JPEG blocks: strong compression leaves 8-pixel
    blocks and ringing that no copy shares with its original."""
    q = p.quality
    if q is None or q >= 85 or not own_side:
        return S.BLUR_SIGMA
    strength = 0.15 if q >= 60 else 0.25 if q >= 40 else 0.35
    return max(S.BLUR_SIGMA, strength * 8 * compare_side / own_side)


def _pixel_match(
    ya: np.ndarray, yb: np.ndarray, valid: np.ndarray, template: np.ndarray | None, patch: int
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
    ncc = cov / (np.maximum(sa, S.TEXTURE / 2) * np.maximum(sb, S.TEXTURE / 2))
    informative = va & (np.maximum(sa, sb) > S.TEXTURE)
    # a patch agrees when its pixels correlate, or when they differ by no more than compression
    # noise (a faint texture's correlation is the noise's, not the content's)
    rms = np.sqrt(((ba - bb) ** 2).mean(axis=(2, 3)))
    # compression also shifts a high-contrast patch's mean a little: allow half its contrast there
    mean_ok = np.abs(ma - mb) <= np.maximum(S.PATCH_MEAN, 0.5 * np.maximum(sa, sb) * (ncc >= 0.9))
    agree = ((ncc >= S.PATCH_NCC) | (rms <= S.PATCH_RMS)) & mean_ok
    # flat in both but at different brightness: the content there differs (a product on a template)
    flat_differs = va & ~informative & (np.abs(ma - mb) > S.PATCH_MEAN)
    counted = int(informative.sum() + flat_differs.sum())
    if int(informative.sum()) < S.MIN_INFORMATIVE:
        share = _ink_share(za, zb, valid)
    else:
        share = float((agree & informative).sum() / counted)
    if template is not None and template.any():
        on_template = va & (blocks(template.astype(np.float32)).mean(axis=(2, 3)) > 0.9)
        differs = on_template & ~agree
        own_a = int((differs & (sa > S.TEXTURE)).sum())
        own_b = int((differs & (sb > S.TEXTURE)).sum())
        if min(own_a, own_b) >= S.MIN_TEMPLATE_MARKS:
            marked = on_template & informative
            share = min(share, float((agree & marked).sum() / max(1, int(marked.sum()))))
    shading = _shading(va, ma, mb)
    if shading < S.SHADING_MIN:
        share = min(share, shading)
    return share


def _ink_share(za: np.ndarray, zb: np.ndarray, valid: np.ndarray) -> float:
    """Too little texture for patches to decide: the ink (pixels well off the mean: the letters on a
    blank page, a smooth image's highlights) must agree pixel by pixel; over the whole overlap, the
    blank paper of two pages with other words would agree."""
    ink = valid & ((np.abs(za) > S.INK_Z) | (np.abs(zb) > S.INK_Z))
    region = ink if ink.sum() >= S.PATCH * S.PATCH else valid
    return float(np.mean(np.abs(za[region] - zb[region]) <= S.PATCH_MEAN))


def _shading(va: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> float:
    """Correlation of the patch means across the frame (1.0 where it cannot be told): look-alike
    tiles of one repetitive structure share their edges but not their light."""
    cells = va.ravel()
    if cells.sum() < 4:
        return 1.0
    x, y = ma.ravel()[cells], mb.ravel()[cells]
    return float(np.corrcoef(x, y)[0, 1]) if x.std() > 1e-6 and y.std() > 1e-6 else 1.0


def _color_match(la: np.ndarray, lb: np.ndarray, valid: np.ndarray) -> float:
    """1 when the chroma agree (up to a saturation change), toward 0 for a recolour.

    Compared on coarse cells (JPEG subsamples and smears chroma, a recolour moves it everywhere),
    and relative to at least ``CHROMA_FLOOR`` so the faint chroma of a near-grey image is not
    judged by its compression noise. Grey images agree; one grey and one coloured image do not.
    """
    cells = (max(1, la.shape[1] // S.COLOR_CELL), max(1, la.shape[0] // S.COLOR_CELL))
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
        s = float(np.clip((x * y).sum() / ((x * x).sum() + 1e-6), 1 / S.SATURATION_RANGE, S.SATURATION_RANGE))
        return 1.0 - float(np.abs(y - s * x).mean()) / max(na, nb, S.CHROMA_FLOOR)

    return float(max(0.0, min(agreement(ca, cb), agreement(cb, ca))))
