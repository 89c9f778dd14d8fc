"""Download stage against a real HTTP server on 127.0.0.1, through img2dataset."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import encode, photo
from PIL import Image

from dedup.core.config import DownloadConfig
from dedup.core.layout import WorkDir
from dedup.download.serve import free_port, serve_directory
from dedup.download.stage import failure_reason, run_download

GOOD = {"good.jpg": "JPEG", "good.png": "PNG", "good.webp": "WEBP"}


def _build_site(root: Path) -> None:
    for i, (name, fmt) in enumerate(GOOD.items()):
        (root / name).write_bytes(encode(photo(i), fmt))
    jpeg = encode(photo(10))
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "text.jpg").write_text("this is a web page, not an image")
    Image.new("RGB", (3000, 3000), "gray").save(root / "huge.png")  # 9 MP, over the 4 MP guard below
    (root / "robots.jpg").write_bytes(encode(photo(11)))


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _build_site(root)
    work = WorkDir(tmp_path_factory.mktemp("work") / "w")
    with serve_directory(root, headers={"/robots.jpg": {"X-Robots-Tag": "noai"}}) as base:
        rows = [
            (f"{base}/good.jpg", "a good jpeg"),
            (f"{base}/good.png", "a good png"),
            (f"{base}/good.webp", "a good webp"),
            (f"{base}/missing.jpg", "gone"),
            (f"{base}/truncated.jpg", "cut short"),
            (f"{base}/text.jpg", "html as jpg"),
            (f"{base}/huge.png", "too big"),
            (f"{base}/robots.jpg", "opted out"),
            (f"http://127.0.0.1:{free_port()}/nobody.jpg", "unreachable"),
            ("ht!tp:/not a url", "malformed"),
            (None, "no url"),
        ]
        url_list = root.parent / "urls.parquet"
        pl.DataFrame({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows]}).write_parquet(url_list)
        cfg = DownloadConfig(
            url_list=str(url_list), max_image_area=4_000_000, threads=4, samples_per_shard=4, timeout=5
        )
        summary = run_download(cfg, work)
        snapshot = {p.name: p.read_bytes() for p in work.download_dir.iterdir() if p.is_file()}
        second = run_download(cfg, work)
    return work, summary, second, snapshot, root


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_every_failure_lands_in_its_class(downloaded):
    _, summary, *_ = downloaded
    assert summary["rows"] == 11
    assert summary["successes"] == 3
    counts = {code: info["count"] for code, info in summary["failures"].items()}
    assert counts == {
        "http_4xx": 1,
        "truncated": 1,
        "not_an_image": 1,
        "area_guard": 1,
        "robots_optout": 1,
        "connection_refused": 1,
        "malformed_url": 1,
        "missing_url": 1,
    }


def test_shards_hold_exactly_the_good_images_with_captions(downloaded):
    work, _, _, _, root = downloaded
    images, captions = {}, {}
    for shard in work.download_shards():
        for name, data in _tar_members(work.download_tar(shard)).items():
            key, ext = name.split(".", 1)
            if ext == "txt":
                captions[key] = data.decode()
            elif ext in {"jpg", "png", "webp"}:
                images[key] = data
    assert sorted(captions.values()) == ["a good jpeg", "a good png", "a good webp"]
    assert set(images) == set(captions)
    # A JPEG needing no resize keeps its original bytes (skip_reencode); PNG and WebP are re-encoded
    # to the output format (jpg) with the same pixels, up to JPEG loss.
    by_caption = {captions[k]: data for k, data in images.items()}
    assert by_caption["a good jpeg"] == (root / "good.jpg").read_bytes()
    for caption, name in (("a good png", "good.png"), ("a good webp", "good.webp")):
        got = np.asarray(Image.open(io.BytesIO(by_caption[caption])).convert("RGB"), dtype=float)
        want = np.asarray(Image.open(root / name).convert("RGB"), dtype=float)
        assert got.shape == want.shape and np.abs(got - want).mean() < 8


def test_rerun_downloads_nothing_and_leaves_shards_byte_identical(downloaded):
    work, _, second, snapshot, _ = downloaded
    assert second["resumed_shards"] == second["shards"] == 3
    after = {p.name: p.read_bytes() for p in work.download_dir.iterdir() if p.is_file()}
    assert after == snapshot


def test_summary_file_written(downloaded):
    work, summary, *_ = downloaded
    saved = json.loads(work.download_summary.read_text())
    assert saved["successes"] == summary["successes"]
    assert saved["failures"]["robots_optout"]["label"] == "opted out (X-Robots-Tag)"


@pytest.mark.parametrize(
    ("status", "message", "url", "code"),
    [
        ("success", None, "http://x/a.jpg", "success"),
        ("failed_to_download", "HTTP Error 503: Service Unavailable", "http://x/a.jpg", "http_5xx"),
        ("failed_to_download", "<urlopen error timed out>", "http://x/a.jpg", "timeout"),
        ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "http://x", "dns"),
        ("failed_to_resize", "image too small", "http://x/a.jpg", "too_small"),
        ("failed_to_download", "something new", "http://x/a.jpg", "other"),
        ("failed_to_download", "unknown url type: ''", "", "missing_url"),
    ],
)
def test_failure_reason(status, message, url, code):
    assert failure_reason(status, message, url) == code


def _assert_one_line_error(result, must_name: str, workdir: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and must_name in lines[0]
    assert "Traceback" not in result.stderr
    assert not workdir.exists(), "nothing may be written for bad input"


def test_missing_input_file(tmp_path, cli):
    result = cli("download", str(tmp_path / "nope.parquet"), str(tmp_path / "w"))
    _assert_one_line_error(result, "nope.parquet", tmp_path / "w")


def test_input_without_expected_columns(tmp_path, cli):
    path = tmp_path / "urls.csv"
    path.write_text("link,caption\nhttp://127.0.0.1:1/a.jpg,hello\n")
    result = cli("download", str(path), str(tmp_path / "w"))
    _assert_one_line_error(result, "urls.csv", tmp_path / "w")
    assert "'URL'" in result.stderr and "--url-col" in result.stderr


@pytest.mark.parametrize("name", ["empty.parquet", "empty.csv", "empty.jsonl", "zero.csv"])
def test_empty_input(tmp_path, cli, name):
    path = tmp_path / name
    if name == "empty.parquet":
        pl.DataFrame({"URL": [], "TEXT": []}, schema={"URL": pl.String, "TEXT": pl.String}).write_parquet(
            path
        )
    elif name == "empty.csv":
        path.write_text("URL,TEXT\n")
    else:
        path.write_text("")
    result = cli("download", str(path), str(tmp_path / "w"))
    _assert_one_line_error(result, name, tmp_path / "w")
    assert "empty" in result.stderr


def test_a_url_list_that_names_a_local_file_is_refused_unless_allowed(tmp_path, cli):
    """A ``file:///`` row would copy this machine's files into the dataset."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(photo(3)))
    path = tmp_path / "urls.csv"
    path.write_text(f"URL,TEXT\nhttp://127.0.0.1:1/a.jpg,web\nfile://{secret},local\n")
    result = cli("download", str(path), str(tmp_path / "w"))
    _assert_one_line_error(result, "urls.csv", tmp_path / "w")
    assert "row 1" in result.stderr and "--allow-file-urls" in result.stderr
    allowed = run_download(
        DownloadConfig(url_list=str(path), allow_file_urls=True, threads=2, timeout=2),
        WorkDir(tmp_path / "ok"),
    )
    assert allowed["successes"] == 1  # the local file, now that it was asked for


def test_other_formats_and_column_names(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.jpg").write_bytes(encode(photo(1)))
    (root / "b.jpg").write_bytes(encode(photo(2)))
    with serve_directory(root) as base:
        lines = [{"link": f"{base}/a.jpg", "alt": "first"}, {"link": f"{base}/b.jpg", "alt": "second"}]
        jsonl = tmp_path / "urls.jsonl"
        jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        txt = tmp_path / "urls.txt"
        txt.write_text(f"{base}/a.jpg\n{base}/b.jpg\n")
        s1 = run_download(
            DownloadConfig(url_list=str(jsonl), url_col="link", caption_col="alt", threads=2),
            WorkDir(tmp_path / "w1"),
        )
        s2 = run_download(DownloadConfig(url_list=str(txt), threads=2), WorkDir(tmp_path / "w2"))
    assert s1["successes"] == 2 and s2["successes"] == 2
    members = _tar_members(WorkDir(tmp_path / "w1").download_tar(0))
    assert sorted(v.decode() for k, v in members.items() if k.endswith(".txt")) == ["first", "second"]


def test_help_explains_every_option(cli):
    top = cli("--help")
    assert top.returncode == 0
    for command in ("download", "demo", "run", "status"):
        assert command in top.stdout
    sub = cli("download", "--help")
    assert sub.returncode == 0
    for option in (
        "--url-col",
        "--caption-col",
        "--image-size",
        "--resize-mode",
        "--processes",
        "--threads",
        "--timeout",
        "--retries",
        "--max-image-area",
        "--respect-robots",
        "--incremental",
        "--distributor",
        "--input-format",
        "--config",
    ):
        assert option in sub.stdout, option
