"""Local-feature verification of candidate pairs: ORB keypoints and a geometric check (OpenCV).

Global signals (a hash, a thumbnail, even an embedding) confuse look-alikes: two photos of the same
kind of wall, two grass tiles. A copy of an image shares *the same keypoints in the same geometric
arrangement*, up to a crop and a rescale, which look-alikes do not. Each image is normalised to a
longest side of ``SIDE`` pixels, ORB features are matched with Lowe's ratio test, and a similarity
transform (rotation, uniform scale, translation) is fitted with RANSAC; the pair verifies when
enough matches are inliers and the transform is one a web copy undergoes (small rotation, scale
between 1/2 and 2). Mirrored copies are matched against the mirrored image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

SIDE = 256
RATIO = 0.8
RANSAC_PX = 3.0
RANSAC_SEED = 12345
MAX_ROTATION_DEG = 20.0
SCALE_RANGE = (0.5, 2.0)


@dataclass
class Features:
    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray | None  # (n, 32) uint8


def gray_normalised(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        return None
    h, w = img.shape
    s = SIDE / max(h, w)
    if abs(s - 1) > 1e-3:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        img = cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=interp)
    return img


class OrbVerifier:
    """Keeps features per (row, mirrored) and verifies pairs; images come from a loader callback."""

    def __init__(self, min_inliers: int = 15, nfeatures: int = 500) -> None:
        self.min_inliers = min_inliers
        self._orb = cv2.ORB_create(nfeatures=nfeatures, fastThreshold=10, edgeThreshold=15, patchSize=15)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self._gray: dict[int, np.ndarray | None] = {}
        self._features: dict[tuple[int, bool], Features] = {}

    def add_images(self, images: Iterable[tuple[int, bytes]]) -> None:
        for row, data in images:
            self._gray[row] = gray_normalised(data)

    def has_images(self, ids: np.ndarray) -> np.ndarray:
        return np.array([int(i) in self._gray for i in ids], dtype=bool)

    def features(self, row: int, mirrored: bool = False) -> Features:
        key = (row, mirrored)
        if key not in self._features:
            img = self._gray.get(row)
            if img is None:
                self._features[key] = Features(np.zeros((0, 2), np.float32), None)
            else:
                kp, des = self._orb.detectAndCompute(cv2.flip(img, 1) if mirrored else img, None)
                self._features[key] = Features(np.float32([p.pt for p in kp]).reshape(-1, 2), des)
        return self._features[key]

    def inliers(self, a: int, b: int, mirrored: bool) -> int:
        fa, fb = self.features(a), self.features(b, mirrored)
        if fa.descriptors is None or fb.descriptors is None or len(fa.points) < 4 or len(fb.points) < 4:
            return 0
        matches = self._matcher.knnMatch(fa.descriptors, fb.descriptors, k=2)
        good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
        if len(good) < 4:
            return 0
        src = fa.points[[m.queryIdx for m in good]]
        dst = fb.points[[m.trainIdx for m in good]]
        # RANSAC draws from OpenCV's per-thread RNG; reseeding per pair makes a pair's verdict
        # independent of how many pairs were checked before it (input order, resumed runs).
        cv2.setRNGSeed(RANSAC_SEED)
        transform, mask = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX
        )
        if transform is None or mask is None:
            return 0
        scale = math.hypot(transform[0, 0], transform[1, 0])
        angle = abs(math.degrees(math.atan2(transform[1, 0], transform[0, 0])))
        if not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]) or angle > MAX_ROTATION_DEG:
            return 0
        return int(mask.sum())

    def verify(self, a: int, b: int, orientation: str = "both") -> int:
        """Inlier count of the best orientation (``straight``, ``mirrored`` or ``both``)."""
        best = 0
        if orientation in ("straight", "both"):
            best = self.inliers(a, b, False)
        if orientation in ("mirrored", "both") and best < self.min_inliers:
            best = max(best, self.inliers(a, b, True))
        return best
