"""Report stage: one HTML page (works from disk: inline CSS, local thumbnails, no script, no network),
``summary.json`` and PNG plots, for whatever stages of a work directory have run.

Every number in ``summary.json`` is recomputed from the stages' parquet and JSON outputs, never copied
from memory (report/numbers.py), and every string that came from the web (captions, URLs, keys) is
HTML-escaped (report/html.py). Plots in report/plots.py, galleries and thumbnails in report/gallery.py:
this module gathers the sections and is the stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from dedup.core.config import ReportConfig
from dedup.core.errors import UserError
from dedup.core.extensions import REPORT_SECTIONS, extension
from dedup.core.files import atomic_path, locked, read_json, write_json
from dedup.core.layout import WorkDir
from dedup.core.markers import write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage
from dedup.report.gallery import galleries
from dedup.report.html import SECTIONS, css, missing, render, table
from dedup.report.numbers import cluster_numbers, download_numbers, ledger_numbers
from dedup.report.plots import plot_download, plot_groups, plot_sweep


def stages_present(work: WorkDir) -> dict[str, bool]:
    """The attack package says which of its stages ran (its folders are its layout)."""
    present = extension(REPORT_SECTIONS, "present")
    return {
        "download": bool(work.download_shards()),
        "embed": work.embed_summary.exists(),
        "cluster": work.clusters.exists(),
        "evaluate": work.evaluation.exists(),
        "write": work.ledger.exists(),
        **(present(work) if present is not None else {"attack": False, "generate_filter": False}),
    }


class ReportStage(Stage):
    """One unit on the driver, redone on every run: the report reads every stage's files and the
    attack's, takes seconds, and is the file a person opens, so it is never left behind its inputs.
    Its marker records what it was made from, so ``dedup status`` can call it stale."""

    name = "report"
    on_driver = True

    def __init__(self, config: ReportConfig) -> None:
        self.config = config

    def outputs(self, work: WorkDir) -> list[Path]:
        return [work.report_dir / "index.html", work.report_dir / "summary.json"]

    def plan(self, work: WorkDir) -> Plan:
        if not work.root.is_dir():
            raise UserError(f"{work.root}: no such work directory")
        work.check_inputs()
        return Plan([Unit(0)])

    def done(self, work: WorkDir, unit: Unit) -> bool:
        return False

    def process(self, work: WorkDir, unit: Unit, state: Any, advance: Advance = None) -> dict[str, Any]:
        summary = _write_report(self.config, work)
        write_marker(work, "report", None, self.config)
        return summary

    def finish(self, work: WorkDir, plan: Plan, todo: list[Unit], results: list[Any], seconds: float) -> dict:
        return results[0]


@locked
def run_report(config: ReportConfig, work: WorkDir) -> dict[str, Any]:
    """report/index.html and report/summary.json from whatever stages have run."""
    return run_stage(ReportStage(config), work, None, progress=False)


def _write_report(config: ReportConfig, work: WorkDir) -> dict[str, Any]:
    out = work.report_dir
    if out.exists():
        shutil.rmtree(out)
    (out / "thumbs").mkdir(parents=True)
    present = stages_present(work)
    summary: dict[str, Any] = {"workdir": str(work.root), "stages": present}
    cards: list[tuple[str, str]] = []
    settings: dict[str, Any] = {}
    page: dict[str, Any] = {
        "title": work.root.name,
        "root": str(work.root),
        "css": css(),
        "nav": SECTIONS,
        "cards": cards,
        "download": None,
        "download_missing": missing("download", f"dedup download URL_LIST {work.root}"),
        "duplicates": None,
        "duplicates_missing": missing("cluster", f"dedup cluster {work.root}"),
        "ledger": None,
        "ledger_missing": missing("write", f"dedup write {work.root}"),
        "galleries": None,
    }

    if present["download"]:
        dl = download_numbers(work)
        summary["download"] = dl
        cards.append((f"{dl['successes']:,}", f"of {dl['rows']:,} URLs downloaded"))
        page["download"] = {
            "plot": plot_download(dl, out),
            "table": table(
                ["outcome", "URLs"],
                [["downloaded", dl["successes"]], *[[k, v] for k, v in dl["failures"].items()]],
                {1},
            ),
        }
    if work.embed_summary.exists():
        settings["embed"] = {
            k: v
            for k, v in read_json(work.embed_summary).items()
            if k in ("embedder", "model", "dim", "device", "precision")
        }

    clusters = pl.read_parquet(work.clusters) if present["cluster"] else None
    if clusters is not None:
        page["duplicates"] = _duplicates(work, clusters, out, summary, cards, settings, present["evaluate"])

    if present["write"]:
        from dedup.write.verify import read_ledger, staleness

        ledger = read_ledger(work)
        ln = ledger_numbers(ledger)
        stale = staleness(work, read_json(work.write_summary)) if work.write_summary.exists() else []
        ln["stale"] = stale
        summary["write"] = ln
        if stale:
            cards.append(("STALE", "the ledger does not match the clusters shown: rerun write"))
        cards.append((f"{ln['kept']:,}", f"of {ln['input_samples']:,} samples kept"))
        page["ledger"] = {
            "kept": f"{ln['kept']:,}",
            "folder": str(work.dedup_dir),
            "path": str(work.ledger),
            "table": table(["reason", "samples"], [[k, v] for k, v in ln["by_reason"].items()], {1}),
            "stale": stale,
        }

    if clusters is not None and present["download"]:
        page["galleries"] = galleries(work, clusters, config, out)
    page["memorization"] = _memorization(work, out, summary, settings)

    summary["settings"] = settings
    page["stages"] = table(
        ["stage", "status"], [[n, "ran" if ok else "not run"] for n, ok in present.items()]
    )
    page["settings"] = [(k, json.dumps(v, indent=2, default=str)) for k, v in settings.items()]
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(render(page), encoding="utf-8")
    write_json(out / "summary.json", summary)
    return summary


def _duplicates(
    work: WorkDir,
    clusters: pl.DataFrame,
    out: Path,
    summary: dict[str, Any],
    cards: list[tuple[str, str]],
    settings: dict[str, Any],
    evaluated: bool,
) -> dict[str, Any]:
    cn = cluster_numbers(clusters)
    summary["clusters"] = cn
    cards.append((f"{cn['duplicate_groups']:,}", "groups with duplicates"))
    cards.append((f"{cn['removed']:,}", "duplicates to remove"))
    cs = read_json(work.cluster_summary) if work.cluster_summary.exists() else {}
    keys = (
        "signals",
        "embedding_threshold",
        "candidate_threshold",
        "phash_threshold",
        "verify",
        "confirm",
        "grouping",
        "representative",
        "search",
    )
    settings["cluster"] = {k: cs.get(k) for k in keys}
    section: dict[str, Any] = {
        "cards": [
            (f"{cn['groups']:,}", f"groups among {cn['samples']:,} images"),
            (f"{cn['largest_group']:,}", "copies in the largest group"),
        ],
        "plot": plot_groups(cn, out),
        "sweep": None,
        "evaluation": [],
    }
    if work.sweep.exists():
        sweep = pl.read_parquet(work.sweep)
        headers = ["threshold", "pairs", "removed"] + (
            ["precision", "recall"] if "precision" in sweep.columns else []
        )
        section["sweep"] = {
            "plot": plot_sweep(sweep, cs.get("embedding_threshold"), out),
            "table": table(
                headers, [[r.get(h) for h in headers] for r in sweep.to_dicts()], set(range(len(headers)))
            ),
        }
    if evaluated:
        ev = read_json(work.evaluation)
        summary["evaluation"] = {k: ev[k] for k in ("pairwise", "removals", "per_transform") if k in ev}
        if "pairwise" in ev:
            pw, rm = ev["pairwise"], ev["removals"]
            section["evaluation"].append(
                table(
                    ["", "precision", "recall"],
                    [
                        ["duplicate pairs", pw["precision"], pw["recall"]],
                        ["removals", rm["precision"], rm["recall"]],
                    ],
                    {1, 2},
                )
            )
            if ev.get("per_transform"):
                section["evaluation"].append(
                    table(
                        ["copy made by", "copies", "found", "recall"],
                        [[t, v["copies"], v["found"], v["recall"]] for t, v in ev["per_transform"].items()],
                        {1, 2, 3},
                    )
                )
    return section


def _memorization(work: WorkDir, out: Path, summary: dict, settings: dict) -> dict[str, Any]:
    """The attack package's section (dedup.core.extensions, ``dedup.report_sections``), or a note that
    the attack has not run."""
    section = extension(REPORT_SECTIONS, "memorization")
    if section is not None:
        return section(work, out, summary, settings)
    return {
        "missing": missing("attack", f"dedup attack compare --before {work.root} --after {work.root}"),
        "compare": None,
        "experiment": None,
        "risk": None,
        "generate_filter": None,
    }
