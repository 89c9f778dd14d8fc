"""The attack end to end on the small demo corpus, tiny budget: train -> sample -> extract -> compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
import torch

from attack.compare import run_compare
from attack.config import AttackConfig
from attack.extract import BUCKETS
from attack.layout import AttackDir

pytestmark = pytest.mark.slow

TINY = dict(
    steps=40,
    batch_size=16,
    channels=16,
    channel_mults=[1, 2],
    resolution=16,
    samples=48,
    sample_steps=5,
    max_distinct=60,
    warmup=5,
)


@pytest.fixture(scope="module")
def compared(small_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    summary = run_compare(small_demo.root, small_demo.root, out, AttackConfig(**TINY), progress=False)
    return out, summary


def test_summary_counts_match_the_per_image_tables(compared):
    out, summary = compared
    paths = AttackDir(out)
    assert (
        json.loads(paths.summary.read_text())["before"]["by_criterion"] == summary["before"]["by_criterion"]
    )
    for which in ("before", "after"):
        images = pl.read_parquet(paths.image_table(which))
        gens = pl.read_parquet(paths.generation_table(which))
        assert gens.height == TINY["samples"]
        assert images.height == summary["reference_images"]
        for crit, row in summary[which]["by_criterion"].items():
            col = f"extracted[{crit}]"
            assert row["total"] == int(images[col].sum())
            assert row["total"] == gens.filter(pl.col(col))["nearest_key"].n_unique()  # unique images
            for name, _, _ in BUCKETS:
                assert row[name] == int(images.filter(pl.col("bucket") == name)[col].sum())
        assert images["times_nearest"].sum() == gens.height
    assert summary["reference_by_bucket"]["20+"] >= 1  # the demo's heavily copied images are in the reference


def test_both_models_share_everything_but_the_data(compared):
    out, summary = compared
    paths = AttackDir(out)
    before = torch.load(paths.model("before"), weights_only=True)
    after = torch.load(paths.model("after"), weights_only=True)
    assert before["config"] == after["config"] and before["step"] == after["step"] == TINY["steps"]
    assert before["data"] != after["data"]
    assert summary["before"]["training_images"] > summary["after"]["training_images"]
    b = np.load(paths.generations("before"), allow_pickle=True)
    a = np.load(paths.generations("after"), allow_pickle=True)
    assert list(b["prompts"]) == list(a["prompts"]) and int(b["seed"]) == int(a["seed"])
    assert paths.pairs_png.stat().st_size > 10_000
    settings = summary["settings"]
    assert settings["alpha"] == 0.5 and settings["neighbours_requested"] == 50
    assert settings["neighbourhood_centre"].startswith("the training image")


def test_rerun_with_the_same_settings_is_skipped(compared, small_demo):
    out, summary = compared
    again = run_compare(small_demo.root, small_demo.root, out, AttackConfig(**TINY), progress=False)
    assert again["skipped"] and again["before"] == json.loads(json.dumps(summary["before"]))


def test_training_resumes_after_sigkill_to_the_same_weights(small_demo, tmp_path):
    args = ["--steps", "300", "--batch-size", "8", "--resolution", "16", "--seed", "3", "--no-progress"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}

    def cmd(out):
        return [
            sys.executable,
            "-m",
            "dedup",
            "attack",
            "train",
            str(small_demo.dedup_dir),
            "--out",
            str(out),
            *args,
            "--config",
            str(tmp_path / "tiny.yaml"),
        ]

    (tmp_path / "tiny.yaml").write_text(
        "attack:\n  channels: 16\n  channel_mults: [1, 2]\n  attention: false\n"
    )
    clean = tmp_path / "clean.pt"
    subprocess.run(cmd(clean), check=True, env=env, capture_output=True, timeout=600)
    killed = tmp_path / "killed.pt"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not killed.exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(killed, weights_only=True)["step"] < 300
    subprocess.run(cmd(killed), check=True, env=env, capture_output=True, timeout=600)
    a, b = torch.load(clean, weights_only=True), torch.load(killed, weights_only=True)
    assert a["step"] == b["step"] == 300
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name


def test_sample_and_extract_commands(compared, small_demo, tmp_path, cli):
    out, _ = compared
    model = AttackDir(out).model("before")
    gens = tmp_path / "g.npz"
    r = cli(
        "attack",
        "sample",
        str(model),
        "-n",
        "8",
        "--out",
        str(gens),
        "--steps",
        "4",
        "--prompts-from",
        str(small_demo.root),
    )
    assert r.returncode == 0, r.stderr
    r = cli("attack", "extract", str(gens), "--train", str(small_demo.root))
    assert r.returncode == 0, r.stderr
    assert "calibrated<=1/3" in r.stdout and (tmp_path / "training_images.parquet").exists()
    bad = cli("attack", "sample", str(tmp_path / "missing.pt"), "-n", "2", "--out", str(gens))
    assert bad.returncode == 2 and "no such checkpoint" in bad.stderr


def test_the_experiment_runs_every_arm_per_replicate_and_resumes(small_demo, tmp_path):
    """Two replicates x every arm at a tiny budget: paired differences with intervals, membership per
    bucket, equal-passes steps scaled to the set, and a rerun that reuses every finished run."""
    from attack.config import ARMS
    from attack.experiment import run_experiment
    from attack.layout import ExperimentDir
    from dedup.core.files import read_json

    cfg = AttackConfig(**{**TINY, "steps": 6, "samples": 8, "max_distinct": 40, "sample_steps": 3})
    out = tmp_path / "exp"
    s = run_experiment(small_demo.root, small_demo.root, out, cfg, [0, 1], holdout=20, progress=False)
    paths = ExperimentDir(out)
    assert s["replicates"] == [0, 1] and set(s["arms"]) == set(ARMS)
    for seed in (0, 1):
        runs = {a: read_json(paths.result(seed, a)) for a in ARMS}
        n_before, n_after = runs["before"]["training_images"], runs["after"]["training_images"]
        assert n_after < n_before and runs["random_removal"]["training_images"] == n_after
        assert runs["after_equal_passes"]["steps"] == max(1, round(6 * n_after / n_before))
        assert runs["before"]["non_members"] == 20 and runs["before"]["membership"]["all"]["members"] > 0
        # every arm of a replicate is judged on the same prompts: the same number of generations
        assert {r["continuous"]["generations"] for r in runs.values()} == {8}
        # exposure per bucket: the exposure-matched control trains on after's samples per bucket
        assert runs["bucket_matched_removal"]["training_images"] == n_after
        for b, e in runs["after"]["exposure"].items():
            assert runs["bucket_matched_removal"]["exposure"][b]["samples"] == e["samples"]
        assert sum(e["samples"] for e in runs["before"]["exposure"].values()) == n_before
        # quality: the held-out loss at every checkpoint (here one, the last step) and the pixel KID
        for r in runs.values():
            q = r["quality"]
            assert [pt["step"] for pt in q["curve"]] == [r["steps"]]
            assert q["heldout_loss"] == q["curve"][-1]["heldout_loss"] > 0
            assert q["pixel_kid"] is not None
    diff = s["exploratory"]["cells"]["after|extracted calibrated<=1/3|total"]
    before = [read_json(paths.result(x, "before"))["extracted"]["calibrated<=1/3"]["total"] for x in (0, 1)]
    after = [read_json(paths.result(x, "after"))["extracted"]["calibrated<=1/3"]["total"] for x in (0, 1)]
    assert diff["mean"] == pytest.approx(np.mean(np.array(before) - np.array(after)))
    assert diff["t95"] is not None and len(diff["t95"]) == 2 and diff["p_holm"] is not None
    # the primary endpoint, from per-image scores of both arms: its estimate is their mean difference
    primary = s["primary"]
    per = []
    for x in (0, 1):
        b, a = (read_json(paths.result(x, arm))["per_image"] for arm in ("before", "after"))
        pick = np.array(b["k"]) >= 5
        per.append(float(np.mean(np.array(a["primary_score"])[pick] - np.array(b["primary_score"])[pick])))
    assert primary["replicates"] == 2 and primary["estimate"] == pytest.approx(np.mean(per))
    assert primary["smallest_possible_p"] == pytest.approx(0.25) and primary["p"] >= 0.25  # 2^-n
    # null calibration: every held-out image scored under every criterion
    null = s["arms"]["before"]["null"]["calibrated<=1.0"]
    assert null["held_out"] == 40 and 0 <= null["false_positives"] <= 40
    assert s["arms"]["before"]["dose"]["calibrated<=0.5"]["curve"]
    text = paths.table.read_text()
    assert "Primary endpoint (attack.md §6)" in text and "p_holm=" in text
    assert "### random_removal" in text and "### bucket_matched_removal" in text
    assert "Exposure per duplicate bucket" in text and "| arm | held-out loss | pixel KID |" in text
    # the tables regenerate from the stored runs alone, identical (bench.attack --tables does this)
    from attack.experiment import analyse_stored
    from attack.tables import format_experiment

    assert format_experiment(analyse_stored(out, cfg)) == format_experiment({**s, "notes": []})
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = run_experiment(small_demo.root, small_demo.root, out, cfg, [0, 1], holdout=20, progress=False)
    assert again["arms"] == s["arms"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps  # nothing retrained
    # the report shows the arms, their intervals and the ROC curve
    import shutil

    from dedup.core.config import ReportConfig
    from dedup.core.layout import WorkDir
    from dedup.report.stage import run_report

    work = WorkDir(tmp_path / "w")
    shutil.copytree(small_demo.root, work.root, symlinks=True)
    shutil.copytree(out, work.attack_dir / "experiment")
    run_report(ReportConfig(), work)
    page = (work.report_dir / "index.html").read_text()
    assert "Controlled experiment: 2 replicate(s)" in page and "random_removal" in page
    assert "What each arm trained on, and how well it learnt" in page and "bucket_matched_removal" in page
    assert (work.report_dir / "quality_curves.png").exists()
    from attack.tables import cell_text

    cell = s["exploratory"]["cells"]["after|extracted calibrated<=1/3|total"]
    assert cell_text(cell) in page and cell_text(cell) in text  # report and RESULTS say the same
    assert (work.report_dir / "membership_roc.png").exists() and "membership inference ROC" in page
    assert (work.report_dir / "dose_response.png").exists() and "Dose-response" in page
