from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dedup.core.config import DownloadConfig, PipelineConfig, load_config, override
from dedup.core.errors import UserError
from dedup.pipeline import DEMO_SETTINGS, demo_config


def test_demo_yaml_matches_builtin_demo_settings():
    loaded = load_config(REPO / "configs" / "demo.yaml")
    assert loaded.workdir == str(REPO / "demo-work")  # relative to the config's folder: ../demo-work
    assert loaded.model_copy(update={"workdir": "demo-work"}) == demo_config()
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert {**raw, "workdir": "demo-work"} == DEMO_SETTINGS


def test_relative_paths_in_a_config_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    cfg = folder / "c.yaml"
    cfg.write_text("workdir: w\nsource: data/photos\ndownload: {url_list: s3://b/list.parquet}\n")
    monkeypatch.chdir(tmp_path)  # run from elsewhere
    loaded = load_config(cfg)
    assert loaded.workdir == str(folder / "w") and loaded.source == str(folder / "data" / "photos")
    assert loaded.download.url_list == "s3://b/list.parquet"  # a URL stays a URL
    assert load_config(folder / ".." / "project" / "c.yaml").workdir == str(folder / "w")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    assert isinstance(load_config(path), PipelineConfig)


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  image_sise: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml: key 'download.image_sise'"):
        load_config(bad)


def test_invalid_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  image_size: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_cli_options_override_config():
    base = DownloadConfig(image_size=256, threads=8)
    out = override(base, image_size=128, threads=None)
    assert out.image_size == 128 and out.threads == 8
    with pytest.raises(UserError, match="image_size"):
        override(base, image_size=-1)


def test_dedup_reads_the_attack_section_without_importing_attack_by_name():
    """attack/ owns its settings (attack/config.py, found by the `dedup.sections` entry point); dedup
    imports attack only where it runs the attack: the CLI that mounts its commands, the pipeline's
    attack stage and the report's reader of its generations."""
    import ast

    from dedup.core.config import PipelineConfig, dump_config, extension_section

    allowed = {"cli.py", "pipeline.py", "report.py"}
    for path in sorted((REPO / "dedup").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "attack" or n.startswith("attack.") for n in names):
                assert path.name in allowed, f"{path} imports {names}"
    from attack.config import AttackConfig

    assert extension_section("attack") is AttackConfig
    cfg = PipelineConfig.model_validate({"attack": {"steps": 5}})
    assert isinstance(cfg.attack, AttackConfig) and cfg.attack.steps == 5
    assert "steps: 5" in dump_config(cfg)  # written back in full, not as the base section


def test_an_attack_key_error_names_the_nested_key(tmp_path):
    from dedup.core.config import load_config
    from dedup.core.errors import UserError

    bad = tmp_path / "c.yaml"
    bad.write_text("attack: {steps: 0}\n")
    with pytest.raises(UserError, match=r"c\.yaml: key 'attack\.steps': Input should be greater than 0$"):
        load_config(bad)


IN_WORDS = {
    "url_col",
    "respect_robots",
    "embed_missing",
    "signals",
    "embedding_threshold",
    "candidate_threshold",
}


def test_cli_help_defaults_are_the_configs_and_are_shown():
    """Each stage option's "[default: X]" comes from the typed config (one place for each default),
    and survives rich markup (a bare [default: ...] was swallowed as a tag and never shown)."""
    import typer

    from dedup.cli import app
    from dedup.core.config import ClusterConfig, DownloadConfig, EmbedConfig, WriteConfig
    from dedup.options import default_of

    group = typer.main.get_command(app)
    checked = 0
    for name, section in (("download", DownloadConfig), ("embed", EmbedConfig), ("cluster", ClusterConfig),
                          ("write", WriteConfig)):  # fmt: skip
        for param in group.commands[name].params:
            field = param.name
            if field in section.model_fields and param.help and "default:" in param.help:
                assert "\\[default:" in param.help, (name, field)  # escaped for rich
                if field in IN_WORDS:
                    continue  # the same default said in words ("per embedder", "respect", ...)
                assert default_of(section, field) in param.help, (name, field)
                checked += 1
    assert checked >= 30
    r = run_cli_help("write")
    assert "[default: 10000]" in r


def run_cli_help(command: str) -> str:
    from conftest import run_cli

    return run_cli(command, "--help").stdout
