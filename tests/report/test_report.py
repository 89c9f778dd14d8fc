"""Report: summary.json agrees with the stage outputs; the page renders in headless Chromium with every
image loaded, no script errors, and the hostile caption shown as text."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from dedup.core.config import ReportConfig
from dedup.core.layout import WorkDir
from dedup.demo import HOSTILE_CAPTION
from dedup.report.stage import run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(small_demo, tmp_path_factory):
    work = WorkDir(tmp_path_factory.mktemp("r") / "w")
    shutil.copytree(small_demo.root, work.root, symlinks=True)
    summary = run_report(ReportConfig(), work)
    return work, summary


@pytest.mark.slow
def test_summary_numbers_agree_with_the_parquet_outputs(report):
    work, summary = report
    saved = json.loads((work.report_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    clusters = pl.read_parquet(work.clusters)
    assert saved["clusters"]["samples"] == clusters.height
    assert saved["clusters"]["groups"] == clusters["cluster_id"].n_unique()
    assert saved["clusters"]["removed"] == int((~clusters["is_representative"]).sum())
    assert saved["clusters"]["largest_group"] == clusters["cluster_size"].max()
    hist = clusters.group_by("cluster_id").len()["len"].value_counts()
    assert {int(k): v for k, v in saved["clusters"]["group_size_histogram"].items()} == dict(hist.rows())
    ledger = pl.read_parquet(work.ledger)
    assert saved["write"]["kept"] == int(ledger["kept"].sum())
    assert saved["write"]["by_reason"] == dict(ledger.group_by("reason").len().rows())
    rows = pl.concat([pl.read_parquet(work.download_parquet(s)) for s in work.download_shards()])
    assert saved["download"]["rows"] == rows.height
    assert saved["download"]["successes"] == int((rows["status"] == "success").sum())
    assert saved["stages"]["attack"] is False


@pytest.mark.slow
def test_hostile_caption_is_escaped_in_the_html(report):
    work, _ = report
    page = (work.report_dir / "index.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.lower()
    assert HOSTILE_CAPTION.split(" ")[0] not in page  # never raw


@pytest.mark.slow
def test_partial_work_directory_says_what_did_not_run(tmp_path, small_demo):
    work = WorkDir(tmp_path / "w")
    shutil.copytree(small_demo.download_dir, work.download_dir)
    summary = run_report(ReportConfig(), work)
    assert summary["stages"]["download"] and not summary["stages"]["cluster"]
    page = (work.report_dir / "index.html").read_text()
    assert "The cluster stage has not run" in page and "The write stage has not run" in page


@pytest.mark.slow
def test_page_in_headless_chromium(report):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (in the test extra)"
    )
    work, _ = report
    errors, dialogs = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto((work.report_dir / "index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
        )
        text = page.inner_text("body")
        scripts = page.evaluate("document.scripts.length")
        shot = work.report_dir / "screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == [] and dialogs == [] and scripts == 0
    assert len(images) > 20
    assert [src for src, width in images if width == 0] == []
    assert "<script>alert(1)</script>" in text.lower()  # shown as text, and nothing ran
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
def test_galleries_show_the_verifiers_evidence(report):
    """Each removed member of a shown group says why: the verifier's verdict and the numbers behind it,
    read from pairs.parquet."""
    work, _ = report
    page = (work.report_dir / "index.html").read_text()
    pairs = pl.read_parquet(work.pairs).filter(pl.col("verdict") == "copy")
    assert pairs.height > 0
    assert "verifier: copy; aligned pixels agree" in page
    import re

    shown = {int(x) for x in re.findall(r"aligned pixels agree (\d+) %", page)}
    looked = pl.read_parquet(work.pairs).filter(pl.col("verdict").is_not_null())
    assert shown <= {round(100 * v) for v in looked["pixel_match"].to_list()}  # numbers from the data
