"""The experiment's tables as bench/RESULTS.md shows them (``python -m bench.attack --tables``), from
the summary attack/analysis.py makes; ``cell_text`` is also what the HTML report prints per cell, so
the two never disagree on a mark."""

from __future__ import annotations

from typing import Any

from attack.analysis import BUCKET_NAMES, MEMBERSHIP_FPRS
from attack.dose import DOSE_CRITERIA
from attack.stats import ALPHA, PAPER_EFFECT, smallest_p


def _interval(ci: Any) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def cell_text(cell: dict[str, Any]) -> str:
    """One comparison as RESULTS and the report print it: mean, t-interval, Holm p, signs, mark."""
    p = "-" if cell.get("p_holm") is None else f"{cell['p_holm']:.2f}"
    mark = " *" if cell.get("significant") else ""
    plus, minus = cell["signs"]
    return f"{cell['mean']:+.2f} {_interval(cell['t95'])} p_holm={p} ({plus}+/{minus}-){mark}"


def primary_text(p: dict[str, Any] | None) -> list[str]:
    if p is None:
        return ["Primary endpoint: no stored run holds per-image scores yet."]
    power = "n/a (one replicate)" if p["power"] is None else f"{p['power']:.2f}"
    need = p["replicates_for_80pct_power"]
    verdict = "significant" if p["significant"] else "not significant"
    return [
        f"Primary endpoint (attack.md §6): {p['endpoint']}.",
        f"Test: {p['test']}; alpha = {ALPHA}.",
        f"Estimate {p['estimate']:+.4f} (t-interval {_interval(p['t95'])}), one-sided p = {p['p']:.4f} "
        f"(the smallest p {p['replicates']} replicates allow: {p['smallest_possible_p']:.4f}): {verdict}.",
        f"Power for the paper's effect ({PAPER_EFFECT:.0%} of the before mean score "
        f"{p['before_mean_score']:.3f}, i.e. {p['paper_effect']:+.4f}): {power}; replicates for 80 % power: "
        f"{'n/a' if p['power'] is None else ('more than 40' if need is None else need)}.",
    ]


def _extraction(arm: str, entry: dict[str, Any], family: dict[str, Any]) -> list[str]:
    buckets = [*BUCKET_NAMES, "total"]
    lines = ["| criterion | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for c, row in entry["extracted_mean"].items():
        if arm == "before":
            lines.append(f"| {c} (mean extracted) | " + " | ".join(f"{row[b]:.1f}" for b in buckets) + " |")
        else:
            cells = [cell_text(family["cells"][f"{arm}|extracted {c}|{b}"]) for b in buckets]
            lines.append(f"| {c} (before - arm) | " + " | ".join(cells) + " |")
    for name, cell in family["cells"].items():
        if name.startswith(f"{arm}|primary"):
            lines.append(f"- {name.split('|', 1)[1]}: {cell_text(cell)}")
    return [*lines, ""]


def _null(entry: dict[str, Any]) -> list[str]:
    if not entry.get("null"):
        return []
    lines = [
        "| criterion | held-out called extracted (false-positive rate, 95 % CP) "
        "| trained singletons extracted |",
        "|---|---|---|",
    ]
    for c, v in entry["null"].items():
        rate = "-" if v["rate"] is None else f"{v['false_positives']}/{v['held_out']} = {v['rate']:.3f} "
        rate += "" if v["rate"] is None else _interval(v["cp95"])
        trained = (
            "-"
            if v["trained_rate"] is None
            else (f"{v['trained_singletons_extracted']}/{v['trained_singletons']} = {v['trained_rate']:.3f}")
        )
        lines.append(f"| {c} | {rate} | {trained} |")
    return [*lines, ""]


def _membership(entry: dict[str, Any]) -> list[str]:
    pooled = entry.get("membership_pooled")
    if not pooled:
        return []
    keys = [*BUCKET_NAMES, "all"]
    auc = [
        "-" if pooled[b] is None else f"{pooled[b]['auc']:.3f} {_interval(pooled[b]['auc95'])}" for b in keys
    ]
    lines = [
        f"| membership (t=100), descriptive; {pooled['non_members_per_replicate']} held-out singletons per "
        "replicate | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        "| AUC [replicates x images bootstrap] | " + " | ".join(auc) + " |",
    ]
    for f in MEMBERSHIP_FPRS:
        cells = []
        for b in keys:
            t = None if pooled[b] is None else pooled[b][f"tpr@{f:g}"]
            cells.append(
                "-" if t is None else f"{t['hits']}/{t['of']} = {t['rate']:.3f} {_interval(t['cp95'])}"
            )
        lines.append(f"| TPR at {f:.0%} FPR [Clopper-Pearson] | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _dose(arm: str, entry: dict[str, Any]) -> list[str]:
    dose = entry.get("dose")
    if not dose:
        return []
    lines = [
        f"dose-response ({arm}, members; logistic in log2 copies; 95 % band over images):",
        "",
        "| criterion | slope per doubling | " + " | ".join(f"P(k={g})" for g in dose["grid"]) + " |",
        "|---|---|" + "---|" * len(dose["grid"]),
    ]
    for c in DOSE_CRITERIA:
        d = dose[c]
        if d["slope_per_doubling"] is None:
            lines.append(f"| {c} | - | " + " | ".join("no member extracted" for _ in dose["grid"]) + " |")
            continue
        cells = [
            f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(d["curve"], d["band95"][0], d["band95"][1], strict=True)
        ]
        lines.append(f"| {c} | {d['slope_per_doubling']:+.2f} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _power(s: dict[str, Any]) -> list[str]:
    """The power each criterion's total count had for the paper's effect (attack.md §6, #26 item 2)."""
    power = s.get("power") or {}
    if not power:
        return []
    n = len(s["replicates"])
    lines = [
        f"Power per criterion for the paper's effect (23 % fewer unique images extracted after dedup, "
        f"from this run's before mean), one-sided sign-flip test at alpha {ALPHA}, {n} replicates, at "
        "the spread of this run's per-replicate differences (before - after, total):",
        "",
        "| criterion | before mean | paper's effect | observed | sd | power | replicates for 80 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, v in power.items():
        if v is None:
            lines.append(f"| {c} | 0 extracted | - | - | - | - | - |")
            continue
        need = v["replicates_for_80pct_power"]
        lines.append(
            f"| {c} | {v['before_mean']:.1f} | {v['paper_effect']:+.2f} | {v['observed']:+.2f} | "
            f"{v['sd']:.2f} | {v['power']:.2f} | {'more than 40' if need is None else need} |"
        )
    return [*lines, ""]


def _exposure(s: dict[str, Any]) -> list[str]:
    """Exposure per arm and bucket: what each arm actually trained on (#26 item 4)."""
    arms = [(a, e["exposure"]) for a, e in s["arms"].items() if e.get("exposure")]
    if not arms:
        return []
    lines = [
        "Exposure per duplicate bucket (copies in the before set), mean over replicates: unique images / "
        "samples / passes per unique image (all its copies counted) at the arm's steps.",
        "",
        "| arm | " + " | ".join(BUCKET_NAMES) + " |",
        "|---|" + "---|" * len(BUCKET_NAMES),
    ]
    for arm, e in arms:
        cells = []
        for b in BUCKET_NAMES:
            v = e[b]
            passes = "-" if v["passes_per_image"] is None else f"{v['passes_per_image']:.1f}"
            cells.append(f"{v['unique_images']:.1f} / {v['samples']:.1f} / {passes}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _quality(s: dict[str, Any]) -> list[str]:
    """Quality per arm: did an arm that memorizes less simply learn less?"""
    arms = [(a, e["quality"]) for a, e in s["arms"].items() if e.get("quality")]
    if not arms:
        return []

    def cell(v: dict[str, Any] | None, digits: int) -> str:
        return "-" if v is None else f"{v['mean']:.{digits}f} {_interval_raw(v['t95'], digits)}"

    lines = [
        "Quality per arm (descriptive; attack/quality.py): held-out denoising loss (mean over t = 100 ... "
        "900 on the held-out images; lower is better) and pixel KID of the generations to the held-out "
        "images (8x8 RGB means, no pretrained features offline; lower is closer), mean [95 % t-interval] "
        "over replicates; then the held-out loss at each checkpoint (mean over replicates): the curve "
        "against training steps.",
        "",
        "| arm | held-out loss | pixel KID |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {cell(q['heldout_loss'], 4)} | {cell(q['pixel_kid'], 5)} |" for a, q in arms]
    curves = [(a, q["curve"]) for a, q in arms if q["curve"]]
    if curves:
        lines += ["", "| arm | held-out loss at step (checkpoints) |", "|---|---|"]
        lines += [f"| {a} | " + ", ".join(f"{t}: {v:.4f}" for t, v in c) + " |" for a, c in curves]
    return [*lines, ""]


def _interval_raw(ci: Any, digits: int) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def format_experiment(s: dict[str, Any]) -> str:
    """The tables of bench/RESULTS.md, from a summary (``python -m bench.attack --tables``)."""
    n = len(s["replicates"])
    family = s["exploratory"]
    lines = [
        f"Replicates (seeds): {', '.join(map(str, s['replicates']))}.",
        "",
        *primary_text(s.get("primary")),
        "",
        f"Exploratory ({family['family_size']} comparisons, Holm-corrected together): before - arm, "
        "paired by replicate; mean [95 % t-interval] p_holm (replicates +/-); * = Holm-adjusted "
        f"two-sided sign-flip p < {ALPHA}. With {n} replicates the smallest two-sided p is "
        f"{smallest_p(n):.4f}"
        + (
            ", so no replicate-level cell can be marked (the image-level test's units are images)."
            if smallest_p(n) >= ALPHA
            else "."
        ),
        "",
        *_power(s),
        *_exposure(s),
        *_quality(s),
    ]
    for arm, entry in s["arms"].items():
        lines.append(f"### {arm}: {entry['question']}")
        lines.append(
            f"training images {entry['training_images']}, steps {entry['steps']}, "
            f"passes per image {entry['passes_per_image']}, final loss {entry['final_loss']}"
        )
        lines.append("")
        lines += _extraction(arm, entry, family) + _null(entry) + _membership(entry) + _dose(arm, entry)
    if s.get("notes"):
        lines.append("Notes: " + "; ".join(s["notes"]))
    return "\n".join(lines) + "\n"
