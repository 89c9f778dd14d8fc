"""Local-feature candidates: pairs of images that share many ORB keypoint descriptors.

A global signal (a thumbnail, a pHash, even an embedding) of a 30 %-a-side crop has little in common
with its original's, so crops never become candidates for verification. Keypoint descriptors do
survive a crop, a rescale, a border and a small rotation: each image keeps ``FEATURES`` ORB
descriptors (computed in the embed stage, on the same border-trimmed view as the hashes), all
descriptors go into one FAISS binary index, and every descriptor votes for the images holding its
nearest neighbours. Pairs with at least ``MIN_VOTES`` votes are *proposed*, never accepted: the
copy verifier (``dedup/cluster/copydetect.py``) decides. This is the voting step of classic copy detection
(local descriptors, then geometric verification), with FAISS doing the matching.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

FEATURES = 160  # descriptors kept per image (the strongest corners)
SIDE = 256  # the image's longest side when keypoints are detected
MATCH_BITS = 48  # Hamming distance (of 256 bits) at most for two descriptors to match
NEIGHBOURS = 4  # nearest descriptors each descriptor votes for
MIN_VOTES = 6  # distinct matching descriptors for a pair to be proposed
FLAT_MAX = 200_000  # exact binary search up to this many descriptors, IVF above
# Descriptors the IVF's lists are trained on, per list. k-means costs lists x points, so 64 a list took
# 34 of the 10k scaling set's 68 s; 16 takes 9 s and keeps 96.5 % of its candidate pairs (others take
# the place of the rest: the lists are an approximation either way), and the demo's removals stayed
# 1,419 at precision 1.000, recall 0.993 (bench/RESULTS.md, "Where the cluster stage's time goes").
TRAIN_PER_LIST = 16
EMPTY = np.zeros((0, 32), dtype=np.uint8)


def describe(image: Image.Image) -> np.ndarray:
    """(n <= FEATURES, 32) uint8 ORB descriptors of an image, for candidate voting."""
    gray = np.asarray(image.convert("L"))
    h, w = gray.shape
    s = SIDE / max(h, w)
    if abs(s - 1) > 1e-3:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        gray = cv2.resize(gray, (max(8, round(w * s)), max(8, round(h * s))), interpolation=interp)
    orb = cv2.ORB_create(nfeatures=FEATURES, fastThreshold=10, edgeThreshold=15, patchSize=15)
    _, des = orb.detectAndCompute(gray, None)
    return EMPTY if des is None else des[:FEATURES].astype(np.uint8)


def candidate_pairs(
    descriptors: np.ndarray, owner: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, votes) with i < j: image pairs that share at least MIN_VOTES matching descriptors.

    ``descriptors``: (m, 32) uint8, ``owner``: (m,) image id of each descriptor.
    """
    import faiss

    if len(descriptors) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = np.ascontiguousarray(descriptors, dtype=np.uint8)
    if len(d) <= FLAT_MAX:
        index = faiss.IndexBinaryFlat(256)
    else:
        nlist = int(4 * np.sqrt(len(d)))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(256), 256, nlist)
        index.cp.min_points_per_centroid = TRAIN_PER_LIST  # what we give it is what we mean
        rng = np.random.default_rng(0)
        index.train(d[rng.choice(len(d), size=min(len(d), TRAIN_PER_LIST * nlist), replace=False)])
        index.nprobe = 16
    index.add(d)
    dist, nbr = index.search(d, NEIGHBOURS + 1)
    q = np.repeat(np.arange(len(d)), NEIGHBOURS + 1)
    nbr, dist = nbr.ravel(), dist.ravel()
    ok = (nbr >= 0) & (dist <= MATCH_BITS)
    q, nbr = q[ok], nbr[ok]
    a, b = owner[q].astype(np.int64), owner[nbr].astype(np.int64)
    other = a != b
    q, b = q[other], b[other]
    # one vote per (query descriptor, other image): a query's own image is fixed, so (q, b) names the
    # vote in one flat key. return_counts keeps numpy's sorting path: its plain unique (hashing, numpy
    # 2.4) took 8.6 s on the 10^7 keys of 10^4 images, against 0.1 s sorted
    voted = np.unique(q * n_images + b, return_counts=True)[0]
    q, b = voted // n_images, voted % n_images
    a = owner[q].astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)  # pairs unordered
    ids, votes = np.unique(lo * n_images + hi, return_counts=True)
    keep = votes >= MIN_VOTES
    return ids[keep] // n_images, ids[keep] % n_images, votes[keep]
