"""Every path of a work directory, defined once.

Stages never build paths by hand: they ask a :class:`WorkDir` (how files are written and the
work directory locked is dedup/core/files.py). Each stage's per-shard outputs are
independent files, so a shard is a self-contained task that any worker (a process, a Ray task) can run,
and a completion marker per (stage, shard) under ``_manifest/`` records what is done and with which
config. Layout (``NNNNN`` is a 5-digit shard id, as img2dataset names shards)::

    WORKDIR/
      input/part_NNNNN.parquet, manifest.json              the URL list normalised and keyed
      download/NNNNN.tar, NNNNN.parquet, NNNNN_stats.json   img2dataset's own layout
      download/NNNNN.tar.ref                               (import) an original tar read in place
      download_summary.json
      source_listing.parquet                               (import) the source's files as read
      embed/img_emb/img_emb_NNNNN.npy                      clip-retrieval's layout
      embed/metadata/metadata_NNNNN.parquet
      embed/local/local_NNNNN.npy                          ORB descriptors (local-feature candidates)
      embed/embed_summary.json
      cluster/pairs.parquet, clusters.parquet, cluster_summary.json, evaluation.json
      dedup/NNNNN.tar, NNNNN.parquet, NNNNN_stats.json      deduplicated WebDataset
      ledger.parquet, write_summary.json
      attack/                                              the attack package's (attack/layout.py)
      report/index.html, summary.json, *.png
      _manifest/<stage>/NNNNN.json, _manifest/<stage>.json  completion markers
      _manifest/lock                                       PID of the dedup process using the work dir
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

SHARD_DIGITS = 5
_SHARD_RE = re.compile(r"^(\d+)\.tar(?:\.ref)?$")


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class WorkDir:
    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    # -- the URL list, normalised and keyed before download (dedup.download.urllist) --
    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    def input_part(self, index: int) -> Path:
        return self.input_dir / f"part_{shard_name(index)}.parquet"

    @property
    def input_manifest(self) -> Path:
        return self.input_dir / "manifest.json"

    # -- download (img2dataset's output folder, left exactly as it writes it) --
    @property
    def download_dir(self) -> Path:
        return self.root / "download"

    def download_tar(self, shard: int) -> Path:
        return self.download_dir / f"{shard_name(shard)}.tar"

    def download_ref(self, shard: int) -> Path:
        """An imported shard read in place: the original tar's path, size and mtime (JSON)."""
        return self.download_dir / f"{shard_name(shard)}.tar.ref"

    def input_tar(self, shard: int) -> Path:
        """The tar every stage reads shard ``shard`` from: the work dir's own, or the original an
        import references in place, refused (one line) when it changed since the import."""
        return tar_in(self.download_dir, shard)

    def input_identity(self, shard: int) -> list[int]:
        """What a shard's results were made from: its tar's and its parquet's size and mtime. A shard
        downloaded again (other data, same name) gets another identity, so its results are redone."""
        out = []
        for path in (self.input_tar(shard), self.download_parquet(shard)):
            st = path.stat()
            out += [st.st_size, st.st_mtime_ns]
        return out

    def check_inputs(self) -> None:
        """Every input tar is there and, if imported in place, unchanged: checked before a stage
        starts, so a stage refuses in one line instead of failing half-way."""
        from dedup.core.errors import UserError

        if self.download_dir.exists() and not self.download_dir.is_dir():
            raise UserError(f"{self.download_dir}: not a folder (a work dir's download stage is one)")
        for shard in self.download_shards():
            self.input_tar(shard)
            if not self.download_parquet(shard).is_file():
                raise UserError(
                    f"{self.download_parquet(shard)}: missing (the shard's record of its samples); "
                    "download or import the shard again"
                )

    def download_parquet(self, shard: int) -> Path:
        return self.download_dir / f"{shard_name(shard)}.parquet"

    def download_stats(self, shard: int) -> Path:
        return self.download_dir / f"{shard_name(shard)}_stats.json"

    @property
    def download_summary(self) -> Path:
        # Outside download/: img2dataset treats every *.json there as a finished shard.
        return self.root / "download_summary.json"

    @property
    def source_listing(self) -> Path:
        """An import's source as it was read: every file's name, size and mtime (parquet), so a
        changed source is refused instead of called up to date."""
        return self.root / "source_listing.parquet"

    def download_shards(self) -> list[int]:
        """Shards img2dataset finished (its ``_stats.json`` is written last)."""
        return shards_in(self.download_dir)

    # -- embed --
    @property
    def embed_dir(self) -> Path:
        return self.root / "embed"

    def img_emb(self, shard: int) -> Path:
        return self.embed_dir / "img_emb" / f"img_emb_{shard_name(shard)}.npy"

    def local_features(self, shard: int) -> Path:
        """ORB descriptors of the shard's samples, concatenated in row order (``local_count`` each)."""
        return self.embed_dir / "local" / f"local_{shard_name(shard)}.npy"

    def metadata(self, shard: int) -> Path:
        return self.embed_dir / "metadata" / f"metadata_{shard_name(shard)}.parquet"

    @property
    def embed_summary(self) -> Path:
        return self.embed_dir / "embed_summary.json"

    # -- cluster --
    @property
    def cluster_dir(self) -> Path:
        return self.root / "cluster"

    @property
    def candidates(self) -> Path:
        """The candidates step's pairs (unique-image indices i < j, shared keypoints)."""
        return self.cluster_dir / "candidates.parquet"

    @property
    def verify_dir(self) -> Path:
        return self.cluster_dir / "verify"

    @property
    def verify_plan(self) -> Path:
        """The pairs the verify step examines, in order, with their chunk and where their images are."""
        return self.verify_dir / "plan.parquet"

    def verify_part(self, unit: int) -> Path:
        """One verify unit's evidence."""
        return self.verify_dir / f"part-{unit:06d}.parquet"

    @property
    def pairs(self) -> Path:
        return self.cluster_dir / "pairs.parquet"

    @property
    def clusters(self) -> Path:
        return self.cluster_dir / "clusters.parquet"

    @property
    def cluster_summary(self) -> Path:
        return self.cluster_dir / "cluster_summary.json"

    @property
    def evaluation(self) -> Path:
        return self.cluster_dir / "evaluation.json"

    @property
    def sweep(self) -> Path:
        return self.cluster_dir / "threshold_sweep.parquet"

    # -- write --
    @property
    def dedup_dir(self) -> Path:
        return self.root / "dedup"

    def dedup_tar(self, shard: int) -> Path:
        return self.dedup_dir / f"{shard_name(shard)}.tar"

    def dedup_parquet(self, shard: int) -> Path:
        return self.dedup_dir / f"{shard_name(shard)}.parquet"

    def dedup_stats(self, shard: int) -> Path:
        return self.dedup_dir / f"{shard_name(shard)}_stats.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.parquet"

    @property
    def write_summary(self) -> Path:
        return self.root / "write_summary.json"

    @property
    def write_rows(self) -> Path:
        """The kept samples' download rows, written once by the driver for every output-shard unit."""
        return self.manifest_dir / "write_rows.parquet"

    # -- attack and report --
    @property
    def attack_dir(self) -> Path:
        return self.root / "attack"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    # -- demo corpus --
    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    @property
    def demo_url_list(self) -> Path:
        return self.demo_dir / "urls.parquet"

    @property
    def demo_ground_truth(self) -> Path:
        return self.demo_dir / "ground_truth.parquet"

    # -- manifest --
    @property
    def manifest_dir(self) -> Path:
        return self.root / "_manifest"

    def marker(self, stage: str, shard: int | None = None) -> Path:
        if shard is None:
            return self.manifest_dir / f"{stage}.json"
        return self.manifest_dir / stage / f"{shard_name(shard)}.json"

    @property
    def config_copy(self) -> Path:
        return self.root / "config.yaml"


def tar_in(folder: Path, shard: int) -> Path:
    """Shard ``shard`` of a folder of shards, following an import's in-place reference."""
    ref = folder / f"{shard_name(shard)}.tar.ref"
    return referenced_tar(ref) if ref.exists() else folder / f"{shard_name(shard)}.tar"


def referenced_tar(ref: Path) -> Path:
    """The original tar a ``.tar.ref`` names, checked unchanged (size and mtime) since the import:
    results made from other bytes are never reused."""
    from dedup.core.errors import UserError

    try:
        record = json.loads(ref.read_text())
        path = Path(record["path"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{ref}: damaged reference to an imported shard; import again") from None
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"{ref}: the imported shard {path} is gone (moved or deleted)") from None
    if stat.st_size != record.get("size") or stat.st_mtime != record.get("mtime"):
        raise UserError(
            f"{path}: changed since it was imported into {ref.parent.parent} "
            f"(size {record.get('size')} -> {stat.st_size}); import it into a new work directory"
        )
    return path


def shards_in(folder: Path) -> list[int]:
    """Shard ids in a folder of img2dataset-style shards that have their ``_stats.json``."""
    if not folder.is_dir():
        return []
    out = set()
    for p in folder.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and (folder / f"{m.group(1)}_stats.json").exists():
            out.add(int(m.group(1)))
    return sorted(out)


# -- completion markers --------------------------------------------------------------------------------
