"""``dedup verify``: the write stage's invariants, checked from the files alone.

1. Every input sample (every row of every download parquet) is in the ledger exactly once.
2. Every kept sample is in the output shards exactly once, and nothing else is.
3. Every member of every output sample has the bytes of the same member in the input (sha256).
4. The counts add up: kept + removed = input rows, per reason as in write_summary.json.
5. The ledger and the clusters are the files the write was made from (their sha256 in
   write_summary.json): a damaged ledger, or clusters redone since the write (stale), are named.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.errors import UserError
from dedup.core.files import read_json
from dedup.core.layout import WorkDir, shard_name, shards_in
from dedup.core.shards import input_samples, iter_samples
from dedup.download.stage import download_rows
from dedup.write.ledger import LEDGER_SCHEMA


def _digests(members: dict[str, bytes]) -> dict[str, str]:
    return {ext: hashlib.sha256(data).hexdigest() for ext, data in members.items()}


def file_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def made_from(work: WorkDir) -> dict[str, str | None]:
    """What a write's summary records of its inputs, so that damage and staleness show later."""
    return {"ledger_sha256": file_digest(work.ledger), "clusters_sha256": file_digest(work.clusters)}


def staleness(work: WorkDir, summary: dict[str, Any]) -> list[str]:
    """The ways the ledger and clusters on disk differ from those the write was made from."""
    out = []
    now = made_from(work)
    if "ledger_sha256" in summary and now["ledger_sha256"] != summary["ledger_sha256"]:
        out.append(f"{work.ledger}: changed since the write made it (damaged or edited); rerun write")
    if "clusters_sha256" in summary and now["clusters_sha256"] != summary["clusters_sha256"]:
        out.append(
            f"STALE: {work.clusters} was redone since the write; the output and ledger describe older "
            "clusters (rerun write)"
        )
    return out


def read_ledger(work: WorkDir) -> pl.DataFrame:
    try:
        ledger = pl.read_parquet(work.ledger)
    except Exception as err:
        raise UserError(f"{work.ledger}: damaged ({str(err).splitlines()[0]}); rerun write") from None
    missing = set(LEDGER_SCHEMA) - set(ledger.columns)
    if missing:
        raise UserError(f"{work.ledger}: not a ledger (no column {', '.join(sorted(missing))}); rerun write")
    return ledger


def verify(work: WorkDir, check_bytes: bool = True, summary: dict[str, Any] | None = None) -> list[str]:
    """All violations found (empty when the output is sound). ``summary``: the write's summary
    before it is saved (write checks its own result with it), else write_summary.json."""
    if not work.ledger.exists():
        raise UserError(f"{work.ledger}: missing; run `dedup write {work.root}` first")
    work.check_inputs()
    problems: list[str] = []
    inputs = download_rows(work)["key"].to_list()
    ledger = read_ledger(work)
    ledger_keys = Counter(ledger["key"].to_list())
    input_keys = Counter(inputs)
    for key, n in sorted((input_keys - ledger_keys).items()):
        problems.append(f"input sample {key} is missing from the ledger" + (f" ({n}x)" if n > 1 else ""))
    for key, n in sorted(ledger_keys.items()):
        if n > 1:
            problems.append(f"ledger lists {key} {n} times")
        if key not in input_keys:
            problems.append(f"ledger lists {key}, which is not an input sample")

    output: Counter[str] = Counter()
    out_hashes: dict[str, dict[str, str]] = {}
    for shard in shards_in(work.dedup_dir):
        try:
            for sample in iter_samples(work.dedup_tar(shard)):
                output[sample.key] += 1
                out_hashes[sample.key] = _digests(sample.members)
        except tarfile.TarError as err:
            problems.append(f"{work.dedup_tar(shard)}: not a readable tar ({err})")
    finished = {shard_name(s) for s in shards_in(work.dedup_dir)}
    if work.dedup_dir.is_dir():
        for stray in sorted(work.dedup_dir.glob("*.tar")):
            if stray.stem not in finished:
                problems.append(f"{stray}: an output tar without its _stats.json (unfinished or stray)")
    kept = set(ledger.filter(pl.col("kept"))["key"].to_list())
    for key in sorted(kept - set(output)):
        problems.append(f"kept sample {key} is missing from the output shards")
    for key, n in sorted(output.items()):
        if n > 1:
            problems.append(f"output holds {key} {n} times")
        if key not in kept:
            problems.append(f"output holds {key}, which the ledger does not keep")

    if check_bytes:
        for shard in work.download_shards():
            for sample in input_samples(work.input_tar(shard)):
                got = out_hashes.get(sample.key)
                if got is None:
                    continue
                want = _digests(sample.members)
                for ext in sorted(set(want) | set(got)):
                    if want.get(ext) != got.get(ext):
                        problems.append(f"output member {sample.key}.{ext} differs from the input")

    if summary is None and work.write_summary.exists():
        summary = read_json(work.write_summary)
    if summary is not None:
        problems.extend(staleness(work, summary))
        if summary.get("input_samples") != ledger.height:
            problems.append(
                f"write_summary says {summary.get('input_samples')} input samples, "
                f"the ledger has {ledger.height}"
            )
        if (
            summary.get("kept") != len(kept)
            or summary.get("kept", 0) + summary.get("removed", 0) != ledger.height
        ):
            problems.append("write_summary counts do not add up to the ledger")
        by_reason = {r: v["samples"] for r, v in summary.get("by_reason", {}).items()}
        actual = {r: n for r, n in ledger.group_by("reason").len().rows()}
        if by_reason != actual:
            problems.append(f"write_summary reasons {by_reason} differ from the ledger's {actual}")
    else:
        problems.append(f"{work.write_summary}: missing")
    if sum(output.values()) != len(kept):
        problems.append(f"output holds {sum(output.values())} samples, the ledger keeps {len(kept)}")
    return problems
