"""Report stage: one HTML page (works from disk: inline CSS, local thumbnails, no script, no network),
``summary.json`` and PNG plots, for whatever stages of a work directory have run.

Every number in ``summary.json`` is recomputed from the stages' parquet and JSON outputs, never copied
from memory, and every string that came from the web (captions, URLs, keys) is HTML-escaped.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from dedup.core.config import ReportConfig
from dedup.core.errors import UserError
from dedup.core.extensions import REPORT_SECTIONS, extension
from dedup.core.layout import WorkDir, atomic_path, locked, read_json, write_json
from dedup.core.markers import write_marker
from dedup.core.stage import Advance, Plan, Stage, Unit, run_stage

THUMB = 112
BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-19", 5, 19), ("20+", 20, 10**12))


CAPTION_CHARS = 300


def caption_text(value: Any) -> str:
    """A caption as shown, cut to CAPTION_CHARS (a scraped caption can be a megabyte); the template
    escapes it."""
    text = "" if value is None else str(value)
    if len(text) > CAPTION_CHARS:
        text = f"{text[:CAPTION_CHARS]}… ({len(text):,} characters)"
    return text


# -- numbers ------------------------------------------------------------------------------------------


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


def download_numbers(work: WorkDir) -> dict[str, Any]:
    from dedup.download.stage import FAILURE_LABELS, download_rows

    rows = download_rows(work)
    by = dict(rows.group_by("reason").len().rows())
    return {
        "rows": rows.height,
        "successes": int(by.pop("success", 0)),
        "failures": {FAILURE_LABELS.get(k, k): int(v) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
    }


def cluster_numbers(clusters: pl.DataFrame) -> dict[str, Any]:
    sizes = clusters.group_by("cluster_id").agg(pl.len().alias("n"))["n"].to_numpy()
    hist = dict(zip(*np.unique(sizes, return_counts=True), strict=True))
    share = {}
    for name, lo, hi in BUCKETS:
        in_bucket = sizes[(sizes >= lo) & (sizes <= hi)]
        share[name] = {
            "groups": len(in_bucket),
            "samples": int(in_bucket.sum()),
            "share_of_samples": round(float(in_bucket.sum()) / max(1, int(sizes.sum())), 4),
        }
    return {
        "samples": clusters.height,
        "groups": len(sizes),
        "duplicate_groups": int((sizes > 1).sum()),
        "removed": int((~clusters["is_representative"]).sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "group_size_histogram": {str(int(k)): int(v) for k, v in hist.items()},
        "by_bucket": share,
    }


def ledger_numbers(ledger: pl.DataFrame) -> dict[str, Any]:
    return {
        "input_samples": ledger.height,
        "kept": int(ledger["kept"].sum()),
        "removed": int((~ledger["kept"]).sum()),
        "by_reason": dict(sorted(ledger.group_by("reason").len().rows())),
    }


# -- plots --------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path.name


def plot_download(numbers: dict[str, Any], out: Path) -> str:
    plt = _plt()
    labels = ["downloaded", *numbers["failures"]]
    values = [numbers["successes"], *numbers["failures"].values()]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(labels) + 0.8))
    colors = ["#2a9d8f"] + ["#e76f51"] * (len(labels) - 1)
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("URLs")
    ax.set_title("Download outcome")
    return _save(fig, out / "download_outcome.png")


def plot_groups(numbers: dict[str, Any], out: Path) -> str:
    plt = _plt()
    hist = {int(k): v for k, v in numbers["group_size_histogram"].items()}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.loglog(list(hist), list(hist.values()), "o", color="#264653", markersize=4)
    a.set_xlabel("group size (copies of one image)")
    a.set_ylabel("number of groups")
    a.set_title("Duplicate-group sizes (log-log)")
    names = [n for n, _, _ in BUCKETS]
    shares = [numbers["by_bucket"][n]["share_of_samples"] * 100 for n in names]
    b.bar(names, shares, color=["#8ab17d", "#e9c46a", "#f4a261", "#e76f51"])
    for i, v in enumerate(shares):
        b.text(i, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    b.set_xlabel("group size")
    b.set_ylabel("% of all samples")
    b.set_title("Share of the dataset in groups of each size")
    fig.tight_layout()
    return _save(fig, out / "group_sizes.png")


def plot_sweep(sweep: pl.DataFrame, threshold: float | None, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(sweep["threshold"], sweep["removed"], "o-", color="#264653", label="samples removed")
    ax.set_xlabel("embedding cosine threshold")
    ax.set_ylabel("samples removed")
    if threshold is not None:
        ax.axvline(threshold, color="#999", linestyle="--", linewidth=1)
    if "precision" in sweep.columns:
        ax2 = ax.twinx()
        ax2.plot(
            sweep["threshold"], sweep["precision"], "s-", color="#2a9d8f", label="precision", markersize=3
        )
        ax2.plot(sweep["threshold"], sweep["recall"], "^-", color="#e76f51", label="recall", markersize=3)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("pairwise precision / recall")
        ax2.legend(loc="lower left", fontsize=8)
    ax.set_title("Threshold sweep (connected components of accepted pairs)")
    return _save(fig, out / "threshold_sweep.png")


# -- thumbnails ---------------------------------------------------------------------------------------


def thumbnails(work: WorkDir, keys: set[str], folder: Path) -> dict[str, str]:
    """Small JPEG files for the given sample keys (one pass over the shards); key -> relative path."""
    from dedup.core.shards import input_samples

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    if not keys:
        return out
    for shard in work.download_shards():
        for sample in input_samples(work.input_tar(shard)):
            if sample.key not in keys or sample.image is None:
                continue
            try:
                with Image.open(io.BytesIO(sample.image)) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    im.thumbnail((THUMB, THUMB))
                    name = f"{len(out):05d}.jpg"
                    im.save(folder / name, "JPEG", quality=85)
                    out[sample.key] = f"{folder.name}/{name}"
            except Exception:  # an undecodable image simply has no thumbnail
                continue
    return out


def array_thumb(image: np.ndarray, path: Path) -> str:
    im = Image.fromarray(image)
    scale = max(1, THUMB // max(im.size))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path, "PNG")
    return f"{path.parent.name}/{path.name}"


# -- HTML ---------------------------------------------------------------------------------------------


def _css() -> str:
    return (Path(__file__).with_name("report.css")).read_text(encoding="utf-8")


SECTIONS = (
    ("download", "Download"),
    ("duplicates", "Duplicates"),
    ("ledger", "Ledger"),
    ("galleries", "Galleries"),
    ("memorization", "Memorization"),
    ("settings", "Settings"),
)


def _render(context: dict[str, Any]) -> str:
    """The page from templates/report.html.j2, every value autoescaped (captions come from the web)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> dict[str, Any]:
    return {
        "headers": headers,
        "rows": [["" if c is None else c for c in r] for r in rows],
        "numeric": set(numeric),
    }


def _missing(stage: str, command: str) -> dict[str, str]:
    return {"stage": stage, "command": command}


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
        "css": _css(),
        "nav": SECTIONS,
        "cards": cards,
        "download": None,
        "download_missing": _missing("download", f"dedup download URL_LIST {work.root}"),
        "duplicates": None,
        "duplicates_missing": _missing("cluster", f"dedup cluster {work.root}"),
        "ledger": None,
        "ledger_missing": _missing("write", f"dedup write {work.root}"),
        "galleries": None,
    }

    if present["download"]:
        dl = download_numbers(work)
        summary["download"] = dl
        cards.append((f"{dl['successes']:,}", f"of {dl['rows']:,} URLs downloaded"))
        page["download"] = {
            "plot": plot_download(dl, out),
            "table": _table(
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
            "table": _table(["reason", "samples"], [[k, v] for k, v in ln["by_reason"].items()], {1}),
            "stale": stale,
        }

    if clusters is not None and present["download"]:
        page["galleries"] = _galleries(work, clusters, config, out)
    page["memorization"] = _memorization(work, out, summary, settings)

    summary["settings"] = settings
    page["stages"] = _table(
        ["stage", "status"], [[n, "ran" if ok else "not run"] for n, ok in present.items()]
    )
    page["settings"] = [(k, json.dumps(v, indent=2, default=str)) for k, v in settings.items()]
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(_render(page), encoding="utf-8")
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
            "table": _table(
                headers, [[r.get(h) for h in headers] for r in sweep.to_dicts()], set(range(len(headers)))
            ),
        }
    if evaluated:
        ev = read_json(work.evaluation)
        summary["evaluation"] = {k: ev[k] for k in ("pairwise", "removals", "per_transform") if k in ev}
        if "pairwise" in ev:
            pw, rm = ev["pairwise"], ev["removals"]
            section["evaluation"].append(
                _table(
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
                    _table(
                        ["copy made by", "copies", "found", "recall"],
                        [[t, v["copies"], v["found"], v["recall"]] for t, v in ev["per_transform"].items()],
                        {1, 2, 3},
                    )
                )
    return section


def _galleries(work: WorkDir, clusters: pl.DataFrame, config: ReportConfig, out: Path) -> dict[str, Any]:
    meta = pl.concat(
        [
            pl.read_parquet(work.metadata(s), columns=["key", "caption", "url", "width", "height"])
            for s in work.download_shards()
            if work.metadata(s).exists()
        ]
    )
    df = clusters.join(meta, on="key", how="left")
    largest = (
        df.group_by("cluster_id")
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort(["n", "cluster_id"], descending=[True, False])
        .head(config.gallery_groups)
    )
    groups = df.filter(pl.col("cluster_id").is_in(largest["cluster_id"].to_list()))
    shown = (
        groups.sort(
            ["cluster_id", "is_representative", "similarity_to_representative"],
            descending=[False, True, False],
        )
        .group_by("cluster_id", maintain_order=True)
        .head(9)
    )
    pairs = pl.read_parquet(work.pairs) if work.pairs.exists() else None
    border = _borderline(work, pairs, config)
    keys = set(shown["key"].to_list()) | (
        set(border["key_a"].to_list()) | set(border["key_b"].to_list()) if border.height else set()
    )
    thumbs = thumbnails(work, keys, out / "thumbs")
    info = {r["key"]: r for r in df.iter_rows(named=True)}
    evidence = _pair_evidence(pairs)
    out_groups = []
    for cid in largest["cluster_id"].to_list():
        members = shown.filter(pl.col("cluster_id") == cid)
        n = int(largest.filter(pl.col("cluster_id") == cid)["n"][0])
        out_groups.append(
            {
                "id": cid,
                "size": n,
                "more": n - members.height if n > members.height else 0,
                "members": [
                    {
                        "thumb": thumbs.get(r["key"]),
                        "kept": bool(r["is_representative"]),
                        "signal": r["signal"],
                        "similarity": f"{r['similarity_to_representative']:.3f}",
                        "evidence": _evidence(evidence.get(_pair_key(r["key"], r["representative_key"]))),
                        "caption": caption_text(r["caption"]),
                    }
                    for r in members.iter_rows(named=True)
                ],
            }
        )
    borderline = []
    for r in border.iter_rows(named=True):
        sides = []
        for side in ("key_a", "key_b"):
            k = r[side]
            sides.append(
                {
                    "thumb": thumbs.get(k),
                    "kept": bool(info.get(k, {}).get("is_representative")),
                    "caption": caption_text(info.get(k, {}).get("caption")),
                }
            )
        borderline.append(
            {
                "sides": sides,
                "verdict": "duplicate" if r["duplicate"] else "kept apart",
                "cosine": f"{r['similarity']:.3f}",
                "phash": r["phash_distance"],
                "proposed_by": r.get("proposed_by") or "",
                "signal": r["signal"],
                "evidence": _evidence(r),
            }
        )
    return {"groups": out_groups, "borderline": borderline}


def _borderline(work: WorkDir, pairs: pl.DataFrame | None, config: ReportConfig) -> pl.DataFrame:
    """The pairs nearest the decision: the verifier's copy threshold where it looked, else the cosine's."""
    if pairs is None:
        return pl.DataFrame()
    from dedup.cluster.verifier_settings import COPY_MATCH

    cs = read_json(work.cluster_summary) if work.cluster_summary.exists() else {}
    t = float(cs.get("embedding_threshold", 0.95))
    return (
        pairs.filter(pl.col("signal") != "exact")
        .with_columns(
            pl.when(pl.col("pixel_match").is_not_null())
            .then((pl.col("pixel_match") - COPY_MATCH).abs())
            .otherwise((pl.col("similarity") - t).abs())
            .alias("gap")
        )
        .sort("gap", "key_a", "key_b")
        .head(config.borderline_pairs)
    )


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _pair_evidence(pairs: pl.DataFrame | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The verifier's evidence per (unordered) pair of keys, where it looked."""
    if pairs is None or "verdict" not in pairs.columns:
        return {}
    looked = pairs.filter(pl.col("verdict").is_not_null())
    return {_pair_key(r["key_a"], r["key_b"]): r for r in looked.iter_rows(named=True)}


def _evidence(r: dict[str, Any] | None) -> dict[str, Any] | None:
    """Why the verifier called a pair what it did (None when it did not look)."""
    if not r or r.get("verdict") is None:
        return None
    return {
        "verdict": r["verdict"],
        "pixel": f"{100 * r['pixel_match']:.0f}",
        "coverage": f"{100 * r['coverage']:.0f}",
        "colour": f"{100 * r['color_match']:.0f}",
        "inliers": r["orb_inliers"],
    }


def _memorization(work: WorkDir, out: Path, summary: dict, settings: dict) -> dict[str, Any]:
    """The attack package's section (dedup.core.extensions, ``dedup.report_sections``), or a note that
    the attack has not run."""
    section = extension(REPORT_SECTIONS, "memorization")
    if section is not None:
        return section(work, out, summary, settings)
    return {
        "missing": _missing("attack", f"dedup attack compare --before {work.root} --after {work.root}"),
        "compare": None,
        "experiment": None,
        "risk": None,
        "generate_filter": None,
    }
