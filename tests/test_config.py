from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dedup.config import DownloadConfig, PipelineConfig, load_config, override
from dedup.errors import UserError
from dedup.pipeline import DEMO_SETTINGS, demo_config


def test_demo_yaml_matches_builtin_demo_settings():
    assert load_config(REPO / "configs" / "demo.yaml") == demo_config()
    assert yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()) == DEMO_SETTINGS


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
