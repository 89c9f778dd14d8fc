"""Completion markers: one JSON file per stage (and per shard) saying which settings produced its
outputs and when, so a rerun skips what is done with the same settings and redoes what is not
(datatrove's task markers, img2dataset's ``_stats.json``); ``dedup status`` reads them. Where the
files live is layout's business (``WorkDir.marker``)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from dedup.core.files import read_json, write_json
from dedup.core.layout import WorkDir


def config_hash(config: Any) -> str:
    """A stable digest of a stage config, so a marker says which settings produced an output."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_marker(work: WorkDir, stage: str, shard: int | None, config: Any, **facts: Any) -> dict[str, Any]:
    record = {
        "stage": stage,
        "shard": shard,
        "config_hash": config_hash(config),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "written_ns": time.time_ns(),  # two runs within one second still differ
        **facts,
    }
    if stage in UPSTREAM:
        record["upstream"] = upstream_fingerprint(work, stage)
    write_json(work.marker(stage, shard), record)
    return record


# A whole-stage marker -> the marker(s) of the stage whose outputs it read.
UPSTREAM = {"cluster": "embed", "write_stage": "cluster", "report": "write_stage"}


def upstream_fingerprint(work: WorkDir, stage: str) -> str:
    """What the upstream markers say now (each file's settings and when it was written): a stage
    marker records it, and ``dedup status`` calls the stage stale when it no longer matches."""
    up = UPSTREAM[stage]
    paths = [*sorted((work.manifest_dir / up).glob("*.json")), work.marker(up)]
    records = []
    for path in paths:
        marker = read_json(path) if path.is_file() else None
        if marker:
            records.append(
                [path.name, marker.get("config_hash"), marker.get("written_ns", marker.get("completed_at"))]
            )
    return config_hash(records)


def read_marker(work: WorkDir, stage: str, shard: int | None = None) -> dict[str, Any] | None:
    path = work.marker(stage, shard)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(work: WorkDir, stage: str, shard: int | None, config: Any) -> bool:
    """Done means: a marker exists and it was written with the same stage config."""
    marker = read_marker(work, stage, shard)
    return marker is not None and marker.get("config_hash") == config_hash(config)


def clear_marker(work: WorkDir, stage: str, shard: int | None = None) -> None:
    work.marker(stage, shard).unlink(missing_ok=True)


def manifest(work: WorkDir) -> dict[str, Any]:
    """Everything the markers say, stage by stage, for ``dedup status``."""
    out: dict[str, Any] = {}
    if not work.manifest_dir.is_dir():
        return out
    for entry in sorted(work.manifest_dir.iterdir()):
        if entry.is_dir():
            shards = {}
            for f in sorted(entry.glob("*.json")):
                try:
                    shards[f.stem] = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
            out[entry.name] = {"shards": shards}
        elif entry.suffix == ".json":
            try:
                out.setdefault(entry.stem, {})["stage"] = json.loads(entry.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return out


def stage_status(work: WorkDir) -> list[tuple[str, str]]:
    """One line per stage for ``dedup status``: what is done, with which config, and what is stale
    (made from inputs that changed since), judged by the same markers the stages resume from."""
    info = manifest(work)
    lines: list[tuple[str, str]] = []
    latest: dict[str, str] = {}
    stale_stage: set[str] = set()
    inputs = set(work.download_shards())
    for stage, entry in info.items():
        shards = entry.get("shards", {})
        records = list(shards.values()) + ([entry["stage"]] if "stage" in entry else [])
        hashes = sorted({str(m.get("config_hash")) for m in records if m.get("config_hash")})
        latest[stage] = max((str(m.get("completed_at", "")) for m in records), default="")
        unit = "unit(s)" if stage == "cluster-verify" else "shard(s)"
        text = f"{len(shards)} {unit}" if shards else "complete"
        if stage == "embed":
            stale = [
                s
                for s, m in shards.items()
                if int(s) not in inputs or m.get("input") != _identity(work, int(s))
            ]
            missing = len(inputs - {int(s) for s in shards})
            if stale or missing:
                stale_stage.add(stage)
                text += f", {len(stale)} stale (input changed since), {missing} not embedded"
        text = f"{text:<14} config {', '.join(hashes)}"
        if stage == "download":
            problems = [p for p in (_input_problem(work, s) for s in sorted(inputs)) if p]
            if problems:
                stale_stage.add("embed")  # everything made from these inputs is suspect
                text += f"  CHANGED: {len(problems)} input tar(s) changed or gone since ({problems[0]})"
        if stage == "write":
            gone = [s for s in sorted(shards) if not work.dedup_tar(int(s)).exists()]
            if gone:
                text += f"  MISSING: {len(gone)} output tar(s) ({', '.join(gone[:3])}); rerun write"
        lines.append((stage, text))
    upstream = {"cluster": "embed", "write": "cluster", "report": "write"}
    order = [
        "download",
        "import",
        "embed",
        "cluster-candidates",
        "cluster-verify",
        "cluster",
        "write",
        "attack",
        "report",
    ]
    lines.sort(key=lambda line: order.index(line[0]) if line[0] in order else len(order))
    out = []
    for stage, text in lines:
        up = upstream.get(stage)
        if up and (up in stale_stage or _upstream_changed(work, info, stage, latest)):
            stale_stage.add(stage)
            text += f"  STALE: {up} changed since; rerun {stage}"
        out.append((stage, text))
    return out


def _upstream_changed(work: WorkDir, info: dict[str, Any], stage: str, latest: dict[str, str]) -> bool:
    """The stage marker's upstream fingerprint against today's; markers from before it existed are
    judged by their completion times."""
    name = {"write": "write_stage"}.get(stage, stage)
    record = info.get(name, {}).get("stage") or {}
    if name in UPSTREAM and "upstream" in record:
        return record["upstream"] != upstream_fingerprint(work, name)
    up = {"cluster": "embed", "write": "cluster", "report": "write"}[stage]
    return latest.get(up, "") > latest.get(stage, "")


def _input_problem(work: WorkDir, shard: int) -> str | None:
    """Why an input tar cannot be read as it was (an imported original changed or gone), or None."""
    from dedup.core.errors import UserError

    try:
        work.input_tar(shard)
    except UserError as err:
        return str(err)
    return None


def _identity(work: WorkDir, shard: int) -> list[int] | None:
    try:
        return work.input_identity(shard)
    except Exception:
        return None


# -- atomic files ------------------------------------------------------------------------------------
