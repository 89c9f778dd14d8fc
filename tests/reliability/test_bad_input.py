"""Bad input on every command (#15 cases 8 and 9): a one-line error naming the file, key or option,
exit code 2, no traceback; out-of-range values refused before anything is written."""

from __future__ import annotations

import pytest
from conftest import encode, photo, write_download_shard

from dedup.cluster.stage import run_cluster
from dedup.core.config import ClusterConfig, EmbedConfig
from dedup.core.layout import WorkDir
from dedup.embed.stage import run_embed


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    work = WorkDir(root / "w")
    items = [(f"{i:09d}", encode(photo(i % 4, (96, 72)), quality=90), f"c{i}", "jpg") for i in range(8)]
    write_download_shard(work, 0, items)
    run_embed(EmbedConfig(embedder="descriptor"), work, progress=False)
    run_cluster(ClusterConfig(), work, progress=False)
    (root / "empty.csv").write_text("")
    (root / "maybe.csv").write_text("key_a,key_b,duplicate\n000000000,000000004,maybe\n")
    (root / "junk.npz").write_bytes(b"this is not an npz file")
    (root / "typo.yaml").write_text(f"workdir: {work.root}\nclusterr: {{k: 3}}\n")
    (root / "junk.pt").write_bytes(b"this is not a checkpoint")
    import polars as pl

    pl.DataFrame({"URL": ["http://127.0.0.1:9/a.jpg"], "TEXT": ["a"]}).write_parquet(root / "urls.parquet")
    return root, work


CASES = {
    "train resolution 10": (
        ["attack", "train", "{w}", "--out", "{r}/m.pt", "--resolution", "10"],
        "resolution",
    ),
    "train device tpu": (["attack", "train", "{w}", "--out", "{r}/m.pt", "--device", "tpu"], "device"),
    "sample bad checkpoint": (
        ["attack", "sample", "{r}/junk.pt", "-n", "2", "--out", "{r}/g.npz"],
        "junk.pt",
    ),
    "sample missing checkpoint": (
        ["attack", "sample", "{r}/none.pt", "-n", "2", "--out", "{r}/g.npz"],
        "none.pt",
    ),
    "sample n -2": (["attack", "sample", "{r}/junk.pt", "-n", "-2", "--out", "{r}/g.npz"], "-n"),
    "sample n 0": (["attack", "sample", "{r}/junk.pt", "-n", "0", "--out", "{r}/g.npz"], "-n"),
    "extract missing": (["attack", "extract", "{r}/none.npz", "--train", "{w}"], "none.npz"),
    "extract junk": (["attack", "extract", "{r}/junk.npz", "--train", "{w}"], "junk.npz"),
    "candidates top -3": (["attack", "candidates", "{w}", "--top", "-3"], "--top"),
    "generate-filter tau -1": (
        [
            "attack",
            "generate-filter",
            "--generator",
            "ddpm:{r}/junk.pt",
            "--candidates",
            "{r}/none.parquet",
            "--tau",
            "-1",
        ],
        "--tau",
    ),
    "evaluate empty csv": (["evaluate", "{w}", "--ground-truth", "{r}/empty.csv"], "empty.csv"),
    "evaluate label maybe": (["evaluate", "{w}", "--ground-truth", "{r}/maybe.csv"], "maybe"),
    "parquet read as csv": (
        ["download", "{r}/urls.parquet", "{r}/w2", "--input-format", "csv"],
        "urls.parquet",
    ),
    "status on no work dir": (["status", "{r}/nowhere"], "nowhere"),
    "embed on no work dir": (["embed", "{r}/nowhere", "--embedder", "descriptor"], "nowhere"),
    "cluster on no work dir": (["cluster", "{r}/nowhere"], "nowhere"),
    "write on no work dir": (["write", "{r}/nowhere"], "nowhere"),
    "report on no work dir": (["report", "{r}/nowhere"], "nowhere"),
    "verify on no work dir": (["verify", "{r}/nowhere"], "nowhere"),
    "import nothing": (["import", "{r}/nothing", "{r}/w3"], "nothing"),
    "embed bad precomputed": (["embed", "{w}", "--from-precomputed", "{r}"], "img_emb"),
    "cluster threshold 2": (["cluster", "{w}", "--embedding-threshold", "2"], "embedding_threshold"),
    "run unknown key": (["run", "{r}/typo.yaml"], "clusterr"),
    "demo misspelt stage": (["demo", "{r}/demo-w", "--stages", "downlaod"], "downlaod"),
    "run missing config": (["run", "{r}/none.yaml"], "none.yaml"),
    "compare missing after": (["attack", "compare", "--before", "{w}", "--after", "{r}/nowhere"], "nowhere"),
    "experiment unknown arm": (["attack", "experiment", "{w}", "--arms", "before,randm"], "--arms"),
    "experiment without before": (["attack", "experiment", "{w}", "--arms", "after"], "--arms"),
    "experiment seeds 0": (["attack", "experiment", "{w}", "--seeds", "0"], "--seeds"),
    "executor spark": (["write", "{w}", "--executor", "spark"], "spark"),
    "ray address without ray": (["write", "{w}", "--ray-address", "auto"], "--ray-address"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_one_line_error(clustered, cli, case):
    root, work = clustered
    args, needle = CASES[case]
    r = cli(*[a.format(r=root, w=work.root) for a in args])
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]
    assert not (root / "g.npz").exists() and not (root / "m.pt").exists()
