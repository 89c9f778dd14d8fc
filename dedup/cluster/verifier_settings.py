"""The copy verifier's settings, all in one place, each with the reason for its value: the numbers the
geometry (dedup/cluster/geometry.py), the pixel comparison (pixels.py) and the decision
(copydetect.py) read as ``S.NAME``. The cluster stage's key holds their values
(dedup/cluster/fingerprint.py), so a changed number reruns the stage and never reuses old groups.
"""

from __future__ import annotations

from typing import Final

SIDE: Final = 256  # longest side images are normalised to before features and alignment
# longest side of the contained image when pixels are compared (bench/verify.py sets it)
COMPARE_SIDE: int = 256
MIN_COMPARE_SIDE: Final = 32  # below this a comparison has too few patches to say anything
PATCH: Final = 8  # smallest patch side (pixels)
# patches across the compared image's longest side (larger patches at finer scales)
PATCHES_ACROSS: Final = 16
BLUR_SIGMA: Final = 1.0  # suppresses JPEG blocks and resampling differences before comparing
RATIO: Final = 0.8  # Lowe's ratio test
RANSAC_PX: Final = 3.0  # reprojection error of an inlier (pixels at SIDE): ORB's localisation noise
RANSAC_SEED: Final = 12345  # reseeded per pair: a verdict never depends on the pairs before it
MAX_ROTATION_DEG: Final = 20.0  # copies are rotated a few degrees; more is another view
SCALE_RANGE: Final = (0.25, 4.0)  # between the two normalised frames (crops of 30 % a side need ~2.5)
MAX_STRETCH: Final = 1.5  # one axis scaled this much more than the other (an aspect change) at most
MAX_SHEAR: Final = 0.05  # cosine of the angle between the transformed axes (0: perpendicular)
MIN_FIT_INLIERS: Final = 5  # fewest matches a similarity fit is compared on (its pixels then decide)
STRETCH_FIT_INLIERS: Final = 20  # keypoint matches that make an affine (per-axis) fit worth its cost
WINDOW_SIDE: Final = 64  # template matching runs at this size
WINDOW_SCALES: Final = (0.70, 0.76, 0.82, 0.86, 0.90, 0.93, 0.96, 0.98)  # b's size within a's frame
WINDOW_MIN_SCORE: Final = 0.7  # template-match correlation below which a window is no placement
ECC_ITERATIONS: Final = 30  # refinement converges in fewer from a keypoint fit; a cap, not a target
ECC_LEVELS: Final = (0.25, 0.5, 1.0)  # coarse to fine, so a stretch off by a 10 % crop still converges
ECC_MAX_SHIFT: Final = 0.2  # share of the frame a refinement may move a corner by (a 10 % crop a side)

# Decision thresholds, measured on bench/copydetect.py (hard negatives from real photographs) and the
# demo corpus; see bench/RESULTS.md, "Copy detection".
PATCH_NCC: Final = 0.75  # a textured patch agrees when its aligned pixels correlate at least this well
PATCH_RMS: Final = 0.25  # ... or when its pixels differ by at most this (global standard deviations)
# ... and its local brightness differs by at most this (in global standard deviations)
PATCH_MEAN: Final = 0.35
TEXTURE: Final = 0.12  # a patch is informative when its std exceeds this in either image (global std units)
MIN_COVERAGE: Final = 0.97  # the contained image's content must be covered this much by the other's
FILL_TOLERANCE: Final = (5, 5, 5, 5)  # grey levels a uniform border may vary by (JPEG noise)
FILL_STD: Final = 1.5  # ... and their standard deviation at most
COPY_MATCH: Final = 0.95  # share of informative patches that must agree for a copy
DERIVED_MATCH: Final = 0.55  # ... for a derived image (a region or the colours changed)
COLOR_MATCH: Final = 0.60  # colour agreement below this makes a pixel-identical pair derived (recoloured)
DETAIL_TRIGGER: Final = 1.3  # look at fine detail when the contained image has this many times the pixels
DETAIL_RATIO: Final = 1.3  # ... and call it another shot when its detail energy is this many times larger
DETAIL_SIDE: Final = 384  # resolution (longest side) of that look
DETAIL_BLUR: Final = 0.7  # before the Laplacian, so JPEG block noise is not mistaken for detail
COLOR_CELL: Final = 8  # pixels (at the compared size) per cell when colours are compared
# a copy's saturation is at most this many times its source's, or at least 1/this
SATURATION_RANGE: Final = 2.0
CHROMA_FLOOR: Final = 8.0  # chroma (8-bit Lab units) below which colour differences are judged absolutely
SHADING_MIN: Final = 0.95  # correlation of patch means below which the shading disagrees
# a content region smaller than this share of the frame, on fill, is a mark (a letter)
MARK_AREA: Final = 0.01
MIN_TEMPLATE_MARKS: Final = 2  # disagreeing textured patches each image must have on shared fill (other text)
SELF_SIMILAR: Final = 0.98  # correlation with itself shifted by an eighth of the frame: no shift is pinned
# ... then the texture along that axis must correlate this well, else it caps the match
ALONG_TEXTURE: Final = 0.3
MIN_INFORMATIVE: Final = 12  # fewer informative patches than this: decided on the ink (pixels off the mean)
INK_Z: Final = 1.0  # ... a pixel is ink when it lies this many global standard deviations from the mean

# A flat image (a plain colour, a blank page) has no texture to normalise: its pixels are compared as
# they are (a white and a black image agree everywhere once each is normalised by its own contrast).
FLAT_STD: Final = 3.0  # grey levels: the contained region's pixels vary less than this in either image
FLAT_TOLERANCE: Final = 12.0  # ... then a pixel agrees when its grey levels differ by at most this

# The cascade in front of the alignment (issue #24), every threshold set on the hard-negative
# benchmark's copies (bench/verify.py prints the margins): cheap decisive tiers first.
SAME_PIXELS_MEAN: Final = 1.5  # same size, mean |difference| at most this (grey levels, luma and chroma) ...
SAME_PIXELS_TAIL: Final = 16.0  # ... and 99.9 % of pixels within this: the same picture decoded, a copy

# Every covered alignment is first compared small (the contained image at COARSE_SIDE pixels, refined
# there: a fifth of the full comparison's cost) and only one whose pixels agree there at least
# COARSE_FLOOR is compared at full size. On the benchmark (bench/RESULTS.md, "The verification
# cascade") the lowest small match of an alignment that ended copy or derived was 0.333, while 78 % of
# the covered alignments of other photographs fell below 0.25. The unrefined match is no such
# predictor: refinement lifts a rotated copy from 0.05 to 1.0.
COARSE_SIDE: Final = 64  # side of the small comparison (a fifth of the full one's cost)
COARSE_FLOOR: Final = 0.25  # small match below which the full comparison is skipped

# A keypoint fit this confident (inliers and inlier ratio, for the similarity fit and the affine one
# alike) pins the geometry of one orientation: when both fits say the contained image is not covered
# (overlapping views, a strip of a wider shot), no other alignment of that orientation is tried. Set
# on the benchmark and the 10k scaling set (bench/RESULTS.md, "Pinned overlaps"): no copy or derived
# pair of the hard-negative benchmark has both fits uncovered at any confidence, and on the scaling set
# the only copies with a confident straight fit that is uncovered are mirrored copies of symmetric
# content, which is why the rule is per orientation (the mirrored one is still tried).
PIN_INLIERS: Final = 30  # inliers of each fit for the placement to count as pinned
PIN_RATIO: Final = 0.6  # ... and the share of the ratio-tested matches they are

# Evidence.score's ceiling: covered (1) and every informative patch agreeing (1). Only a higher score
# replaces the best alignment, so one reaching it settles the pair whatever its verdict.
MAX_SCORE: Final = 2.0

VERDICTS: Final = ("copy", "derived", "distinct")  # what pairs.parquet's verdict column may hold

# How a pair was decided, cheapest first: the same decoded pixels; no plausible alignment at all (no
# keypoint fit, frames unlike); no alignment covers the contained image (geometry alone); the best
# alignment's pixels disagree already when compared small; the full comparison; an image that does not
# decode. "overlap": a confident keypoint fit pinned a partial overlap (PIN_INLIERS) and no placement of
# the other orientation did better.
TIERS: Final = ("same-pixels", "overlap", "unaligned", "uncovered", "coarse", "aligned", "undecodable")

# Off (bench/verify.py, to measure the cascade's margins), no tier but "same-pixels" stops early:
# every alignment is refined and compared at full size, the full verifier's answers.
CASCADE: bool = True
