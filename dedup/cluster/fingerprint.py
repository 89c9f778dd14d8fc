"""What the pair decision depends on, as one digest: the cluster stage's key holds it, so a result made
by another verifier or grouping (a changed threshold, a changed line) is redone, never reused.

Hand-bumped version numbers were forgotten once; the digest is of the deciding modules' source and
of their settings' values at run time (a number changed by a test or a patch counts too).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

# The modules whose code and constants decide which pairs are duplicates and which image is kept.
DECISION_MODULES = (
    "dedup.cluster.verifier_settings",
    "dedup.cluster.geometry",
    "dedup.cluster.pixels",
    "dedup.cluster.copydetect",
    "dedup.cluster.grouping",
    "dedup.cluster.oracle",
    "dedup.cluster.representatives",
    "dedup.cluster.candidates",
    "dedup.cluster.verify",
    "dedup.cluster.search",
    "dedup.cluster.ivf",
    "dedup.cluster.hash_candidates",
    "dedup.embed.localfeatures",
)


def settings_of(module_name: str) -> dict[str, str]:
    """A module's upper-case constants (its settings), as text."""
    module = importlib.import_module(module_name)
    return {k: repr(v) for k, v in sorted(vars(module).items()) if k.isupper() and not k.startswith("_")}


def decision_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in DECISION_MODULES:
        module = importlib.import_module(name)
        digest.update(name.encode())
        digest.update(Path(str(module.__file__)).read_bytes())
        digest.update(repr(settings_of(name)).encode())
    return digest.hexdigest()[:16]
