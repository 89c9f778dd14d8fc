"""Every path the attack writes, defined once: a before/after run (``WORKDIR/attack`` in a pipeline),
the controlled experiment's replicates and arms, and a generate-and-filter run. The attack package
owns its folders; dedup's work directory only names where they start (``WorkDir.attack_dir``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AttackDir:
    """Paths of one before/after attack run (``WORKDIR/attack`` in a pipeline)."""

    root: Path

    def model(self, which: str) -> Path:
        return self.root / which / "model.pt"

    def generations(self, which: str) -> Path:
        return self.root / which / "generations.npz"

    def generation_table(self, which: str) -> Path:
        return self.root / which / "generations.parquet"

    def image_table(self, which: str) -> Path:
        return self.root / which / "training_images.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def pairs_png(self) -> Path:
        return self.root / "extracted_pairs.png"

    @property
    def reference(self) -> Path:
        return self.root / "reference.npz"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.parquet"

    @property
    def generate_filter(self) -> GenerateFilterDir:
        return GenerateFilterDir(self.root / "generate_filter")

    @property
    def generate_filter_summary(self) -> Path:
        return self.generate_filter.summary


@dataclass(frozen=True)
class ExperimentDir:
    """Paths of the controlled memorization experiment (``attack/experiment.py``): one folder per
    replicate (seed) and arm, each finished run kept, so hours of training resume where they stopped."""

    root: Path

    def replicate(self, seed: int) -> AttackDir:
        """One replicate's arms, laid out as an attack run: ARM/model.pt, ARM/generations.npz, ..."""
        return AttackDir(self.root / f"seed{seed:03d}")

    def result(self, seed: int, arm: str) -> Path:
        """One arm of one replicate: counts, membership scores, the key of everything it depends on."""
        return self.replicate(seed).root / arm / "result.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def table(self) -> Path:
        """The summary as markdown tables (what bench/RESULTS.md quotes)."""
        return self.root / "summary.md"


@dataclass(frozen=True)
class GenerateFilterDir:
    """Paths of one generate-and-filter run (``WORKDIR/attack/generate_filter`` by default)."""

    root: Path

    @property
    def captions(self) -> Path:
        """One file of flags per caption: a rerun resumes caption by caption."""
        return self.root / "captions"

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
