"""The dependency between the two packages runs one way: attack imports dedup, dedup finds what
attack adds through entry points (dedup/core/extensions.py) and never imports it by name."""

from __future__ import annotations

import ast
from pathlib import Path

import dedup
from dedup.core.extensions import COMMANDS, PIPELINE_STAGES, REPORT_SECTIONS, SECTIONS, extension


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_dedup_never_imports_attack():
    root = Path(dedup.__file__).parent
    offenders = {
        str(p.relative_to(root)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "attack")
        for p in root.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_attack_registers_each_extension_it_offers():
    from attack.cli import app, pipeline_stage
    from attack.config import AttackConfig
    from attack.report import memorization_section

    assert extension(SECTIONS, "attack") is AttackConfig
    assert extension(COMMANDS, "attack") is app
    assert extension(PIPELINE_STAGES, "attack") is pipeline_stage
    assert extension(REPORT_SECTIONS, "memorization") is memorization_section
    assert extension(REPORT_SECTIONS, "no such section") is None


def test_tests_mirror_the_stage_packages():
    root = Path(dedup.__file__).parent
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["cluster", "core", "download", "embed", "report", "write"]
    tests = Path(__file__).resolve().parents[1]
    assert all(list((tests / name).glob("test_*.py")) for name in packages)
