"""The cluster stage's second step: the copy verifier's evidence for the pairs the candidates step
selected, as units of work that run on any executor (threads here, tasks on a Ray cluster).

The pairs to verify are written once, in order, to ``cluster/verify/plan.parquet``: sorted by the
connected component of the pairs they belong to, then most promising first; each component is a
**chunk** (one larger than ``VERIFY_CHUNK`` pairs is cut into runs of that many). Inside a chunk
pairs are examined in order, and a pair whose images are already linked by accepted pairs of the same
chunk is skipped (``implied``): it cannot change a group. Nothing crosses a chunk, so a chunk's
evidence depends only on its pairs and the settings, never on which worker ran it, how many threads
there were or how chunks were packed into units: the results are byte-identical for any executor,
thread count or unit size.

A **unit** is a run of whole chunks (about ``verify_unit_pairs`` pairs, 256 by default: enough units
to keep every core busy on a small set); each writes its evidence to
``cluster/verify/part-NNNNNN.parquet`` and a marker keyed by its pairs and the deciding code's
digest, so a killed run resumes from its finished units.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import fields
from itertools import pairwise
from typing import Any

import numpy as np
import polars as pl

from dedup.cluster.copydetect import CopyVerifier, Evidence
from dedup.cluster.grouping import components
from dedup.core.config import ClusterConfig
from dedup.core.errors import UserError
from dedup.core.files import atomic_path
from dedup.core.layout import WorkDir
from dedup.core.markers import is_complete, read_marker, write_marker
from dedup.core.shards import read_sample
from dedup.core.stage import Advance, Plan, Resources, Stage, Unit

# Pairs of one component examined in sequence, each skipped when an earlier accepted pair of its chunk
# already links its images (a group of 148 copies needs ~150 verifications, not its ~2,400 candidate
# pairs). A chunk is a whole component, or a run of this many pairs of a larger one: results depend
# on it (which pairs are "implied"), so it is a setting of the decision, never of the run. Large: look-
# alike images chain groups of copies into components of thousands of pairs (the demo corpus), and a
# cut there re-verifies every group it crosses (4,096 cost the demo 2.4x the verifications).
VERIFY_CHUNK = 65_536
VERIFY_BATCH = 64  # pairs of a chunk examined at once (threads), then linked: results depend on it
# Decoded images (~0.5 MB each, with the mirrored view) one process keeps, its units together: a
# unit's chunks are components, whose images repeat in no local order (the 10k scaling plan decodes
# 71,163 times with 512 cached, 50,776 with 2,048, 31,545 with 4,096; ~1.6 ms a decode). A unit on
# Ray is a process's only unit; locally the units side by side share it.
PREPARED_BUDGET = 4096
PREPARED_MIN = 512  # ... but never fewer per unit

PLAN_SCHEMA = {
    "chunk": pl.Int64,
    "a": pl.Int64,  # unique-image indices, a < b
    "b": pl.Int64,
    "stretch_first": pl.Boolean,  # the same framing: a whole-frame stretch is tried first
    "window_search": pl.Boolean,  # the frames look alike: a template-matched window is tried
    "a_shard": pl.Int64,
    "a_start": pl.Int64,
    "a_end": pl.Int64,
    "b_shard": pl.Int64,
    "b_start": pl.Int64,
    "b_end": pl.Int64,
}
EVIDENCE_FIELDS = {
    "inliers": pl.Int64,
    "inlier_ratio": pl.Float64,
    "coverage": pl.Float64,
    "pixel_match": pl.Float64,
    "color_match": pl.Float64,
    "detail": pl.Float64,
    "alignment": pl.String,
    "verdict": pl.String,
    "tier": pl.String,
}
assert set(EVIDENCE_FIELDS) == {f.name for f in fields(Evidence)}  # one schema for the evidence


def chunk_pairs(pi: np.ndarray, pj: np.ndarray, order: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(pair indices in verification order, chunk of each): the pairs ``order`` lists, grouped by
    the connected component they belong to (in order of each component's first pair), each component
    in ``order``; a chunk is one component, or a run of VERIFY_CHUNK pairs of a larger one."""
    if not len(order):
        return order, np.zeros(0, dtype=np.int64)
    label = components(n, pi[order], pj[order])[pi[order]]
    first: dict[int, int] = {}
    for t, c in enumerate(label.tolist()):
        first.setdefault(c, t)
    rank = np.array([first[c] for c in label.tolist()], dtype=np.int64)
    perm = np.lexsort((np.arange(len(order)), rank))  # by component (first seen), then given order
    ordered, label = order[perm], label[perm]
    chunk = np.zeros(len(ordered), dtype=np.int64)
    current = -1
    for start, stop in _runs(label):
        pieces = np.arange(stop - start) // VERIFY_CHUNK
        chunk[start:stop] = current + 1 + pieces
        current += int(pieces[-1]) + 1
    return ordered, chunk


def _runs(label: np.ndarray) -> list[tuple[int, int]]:
    bounds = [0, *(np.flatnonzero(np.diff(label)) + 1).tolist(), len(label)]
    return list(pairwise(bounds))


def write_plan(
    work: WorkDir,
    meta: pl.DataFrame,
    rows: np.ndarray,
    pi: np.ndarray,
    pj: np.ndarray,
    order: np.ndarray,
    hints: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Write the verification plan for the pairs ``order`` lists (``hints``: stretch_first and
    window_search per listed pair); returns the pair indices in plan order."""
    n = int(max(pi.max(initial=-1), pj.max(initial=-1))) + 1
    position = np.empty(len(pi), dtype=np.int64)
    position[order] = np.arange(len(order))
    ordered, chunk = chunk_pairs(pi, pj, order, n)
    where = meta.select("shard", "tar_start", "tar_end")
    if where["tar_start"].null_count() or where["tar_end"].null_count():
        raise UserError(
            f"{work.embed_dir}: embedded before tar offsets were recorded; run `dedup embed --force`"
        )
    shard, start, end = (
        where[c].to_numpy().astype(np.int64)[rows] for c in ("shard", "tar_start", "tar_end")
    )
    a, b = pi[ordered], pj[ordered]
    table = pl.DataFrame(
        {
            "chunk": chunk,
            "a": a,
            "b": b,
            "stretch_first": hints[0][position[ordered]],
            "window_search": hints[1][position[ordered]],
            "a_shard": shard[a],
            "a_start": start[a],
            "a_end": end[a],
            "b_shard": shard[b],
            "b_start": start[b],
            "b_end": end[b],
        },
        schema=PLAN_SCHEMA,
    )
    work.verify_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(work.verify_plan) as tmp:
        table.write_parquet(tmp)
    return ordered


def _unit_bounds(chunk: np.ndarray, unit_pairs: int) -> list[tuple[int, int]]:
    """Row ranges of whole chunks, about ``unit_pairs`` rows each."""
    out: list[tuple[int, int]] = []
    lo = 0
    for _, stop in _runs(chunk):
        if stop - lo >= unit_pairs or stop == len(chunk):
            out.append((lo, stop))
            lo = stop
    return out


def _digest(table: pl.DataFrame) -> str:
    """Every column of a unit's rows: which pairs, how to align them, and where their images sit (an
    image index alone would name another image once new data shifts the indices)."""
    h = hashlib.sha256()
    for col in PLAN_SCHEMA:
        h.update(table[col].to_numpy().tobytes())
    return h.hexdigest()[:16]


class VerifyStage(Stage):
    """Units = runs of whole chunks of the plan; each writes its evidence part and a marker."""

    name = "cluster-verify"
    unit_name = "pair block"

    def __init__(
        self, config: ClusterConfig, decision: str, embedded: str, force: bool = False, threads: int = 1
    ) -> None:
        self.config, self.decision, self.force = config, decision, force
        self.embedded = embedded  # the embed outputs (and their input tars) the plan was made from
        self.threads = threads  # inside a unit: a giant component is one chunk, verified in batches

    def key(self, digest: str) -> dict[str, Any]:
        c = self.config
        return {
            "pairs": digest,
            "embedded": self.embedded,
            "decision": self.decision,
            "derived": c.derived,
            "inliers": c.orb_min_inliers,
        }

    def inputs(self, work: WorkDir) -> list:
        return [work.verify_plan]

    def outputs(self, work: WorkDir) -> list:
        return [work.verify_plan]

    def resources(self) -> Resources:
        return Resources(cpus=1.0)

    def local_workers(self) -> int:
        # many small components: units side by side; one giant component: its batches over ``threads``
        import os

        return self.config.verify_workers or os.cpu_count() or 1

    def plan(self, work: WorkDir) -> Plan:
        table = pl.read_parquet(work.verify_plan)
        units = []
        for index, (lo, hi) in enumerate(
            _unit_bounds(table["chunk"].to_numpy(), self.config.verify_unit_pairs)
        ):
            units.append(Unit(index, hi - lo, (lo, hi, _digest(table.slice(lo, hi - lo)))))
        return Plan(units)

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return (
            not self.force
            and work.verify_part(unit.index).exists()
            and is_complete(work, self.name, unit.index, self.key(unit.payload[2]))
        )

    def setup(self, work: WorkDir) -> Any:
        import cv2

        cv2.setNumThreads(1)  # units, not OpenCV's threads, share the cores (and the results stay exact)
        return None

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> dict[str, Any]:
        lo, hi, digest = unit.payload
        table = pl.scan_parquet(work.verify_plan).slice(lo, hi - lo).collect()
        if _digest(table) != digest:
            raise UserError(f"{work.verify_plan}: changed while verifying; rerun `dedup cluster`")
        beside = self.local_workers() if self.threads > 1 else 1  # units running in this process
        cache = max(PREPARED_MIN, PREPARED_BUDGET // beside)
        verifier = CopyVerifier(min_inliers=self.config.orb_min_inliers, cache=cache)
        verifier.add_images(_images(work, table))
        rows, tiers = examine_chunks(table, verifier, self.config.derived, advance, self.threads)
        part = pl.DataFrame(rows, schema={"a": pl.Int64, "b": pl.Int64, **EVIDENCE_FIELDS})
        with atomic_path(work.verify_part(unit.index)) as tmp:
            part.write_parquet(tmp)
        write_marker(
            work, self.name, unit.index, self.key(digest), pairs=hi - lo, examined=part.height, tiers=tiers
        )
        return tiers

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        tiers: dict[str, list[float]] = {}
        for unit in plan.units:
            for tier, (count, secs) in (
                (read_marker(work, self.name, unit.index) or {}).get("tiers", {})
            ).items():
                t = tiers.setdefault(tier, [0, 0.0])
                t[0], t[1] = t[0] + count, t[1] + secs
        _remove_stale_parts(work, len(plan.units))
        return {
            "units": len(plan.units),
            "units_run": len(todo),
            "pairs": sum(u.size for u in plan.units),
            "tiers": {k: {"pairs": int(v[0]), "seconds": round(v[1], 2)} for k, v in sorted(tiers.items())},
            "seconds": round(seconds, 2),
        }


def _images(work: WorkDir, table: pl.DataFrame) -> list[tuple[int, bytes]]:
    """The bytes of every image the unit's pairs name, read by the offsets embed recorded."""
    spans = {}
    for side in ("a", "b"):
        for row, shard, start, end in table.select(
            side, f"{side}_shard", f"{side}_start", f"{side}_end"
        ).iter_rows():
            spans[row] = (shard, start, end)
    return _read_spans(work, sorted(spans.items(), key=lambda kv: kv[1]))


def _read_spans(work: WorkDir, spans: list[tuple[int, tuple[int, int, int]]]) -> list[tuple[int, bytes]]:
    """(id, image bytes) for each (id, (shard, start, end)); a span holding no image is left out."""
    out = []
    for row, (shard, start, end) in spans:
        sample = read_sample(work.input_tar(int(shard)), int(start), int(end))
        if sample is not None and sample.image is not None:
            out.append((int(row), sample.image))
    return out


def examine_chunks(
    table: pl.DataFrame,
    verifier: CopyVerifier,
    derived: str,
    advance: Advance = None,
    threads: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Evidence for the table's pairs, chunk by chunk: VERIFY_BATCH pairs not yet linked within their
    chunk are examined at once (on ``threads`` threads), then their accepted pairs link; the batches
    do not depend on the thread count. Returns one row per examined pair and {tier: [pairs, seconds]}."""
    from concurrent.futures import ThreadPoolExecutor

    rows: list[dict[str, Any]] = []
    tiers: dict[str, list[float]] = {}
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def one(pair: tuple[int, int, bool, bool]) -> tuple[Evidence, float]:
        started = time.perf_counter()
        e = verifier.examine(pair[0], pair[1], stretch_first=pair[2], window_search=pair[3])
        return e, time.perf_counter() - started

    listed = table.select("chunk", "a", "b", "stretch_first", "window_search").rows()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pos = 0
        while pos < len(listed):
            chunk, batch = listed[pos][0], []
            if pos == 0 or listed[pos - 1][0] != chunk:
                parent.clear()
            while pos < len(listed) and listed[pos][0] == chunk and len(batch) < VERIFY_BATCH:
                _, a, b, stretch_first, window_search = listed[pos]
                pos += 1
                if find(a) == find(b):
                    tiers.setdefault("implied", [0, 0.0])[0] += 1
                else:
                    batch.append((a, b, stretch_first, window_search))
            for pair, (e, seconds) in zip(batch, pool.map(one, batch), strict=True):
                spent = tiers.setdefault(e.tier, [0, 0.0])
                spent[0] += 1
                spent[1] += seconds
                rows.append({"a": pair[0], "b": pair[1], **{f: getattr(e, f) for f in EVIDENCE_FIELDS}})
                ra, rb = find(pair[0]), find(pair[1])
                if ra != rb and (e.verdict == "copy" or (e.verdict == "derived" and derived == "remove")):
                    parent[ra] = rb
            if advance is not None:
                advance(len(batch))
    return rows, tiers


def read_evidence(work: WorkDir, units: int) -> dict[tuple[int, int], Evidence]:
    """Every unit's evidence, keyed by (a, b)."""
    out: dict[tuple[int, int], Evidence] = {}
    for index in range(units):
        part = pl.read_parquet(work.verify_part(index))
        for r in part.iter_rows(named=True):
            pair = (r.pop("a"), r.pop("b"))
            out[pair] = Evidence(**r)
    return out


def _remove_stale_parts(work: WorkDir, units: int) -> None:
    """Parts and markers of units a previous, larger plan had."""
    for path in work.verify_dir.glob("part-*.parquet"):
        if int(path.stem.split("-")[1]) >= units:
            path.unlink(missing_ok=True)
    folder = work.manifest_dir / VerifyStage.name
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if path.stem.isdigit() and int(path.stem) >= units:
            path.unlink(missing_ok=True)


def load_images(work: WorkDir, meta: pl.DataFrame, rows: np.ndarray) -> list[tuple[int, bytes]]:
    """Image bytes for the given metadata rows, read by the offsets embed recorded."""
    wanted = meta[np.asarray(rows, dtype=np.int64).tolist()].select("shard", "tar_start", "tar_end")
    return _read_spans(work, list(zip(np.asarray(rows).tolist(), wanted.iter_rows(), strict=True)))


def add_images(
    work: WorkDir,
    meta: pl.DataFrame,
    unique: np.ndarray,
    u_of_row: np.ndarray,
    verifier: Any,
    ids: np.ndarray,
) -> None:
    """Give the verifier the images of these unique-image indices."""
    if len(ids):
        loaded = load_images(work, meta, unique[ids])
        verifier.add_images((int(u_of_row[row]), data) for row, data in loaded)
