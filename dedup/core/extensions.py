"""What other packages add to dedup, found by entry point rather than imported by name, so that the
dependency runs one way (the attack package imports dedup; dedup never imports it). Groups, as the
attack package registers them in pyproject.toml:

- ``dedup.sections``: a config section (``attack = "attack.config:AttackConfig"``);
- ``dedup.commands``: a Typer sub-app of the CLI (``attack = "attack.cli:app"``);
- ``dedup.pipeline_stages``: a stage of ``dedup run`` (``attack = "attack.cli:pipeline_stage"``);
- ``dedup.report_sections``: a section of the HTML report
  (``memorization = "attack.report:memorization_section"``), and ``present``, which of the package's
  stages left results (``attack.report:stages_present``: its folders are its own layout).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

SECTIONS = "dedup.sections"
COMMANDS = "dedup.commands"
PIPELINE_STAGES = "dedup.pipeline_stages"
REPORT_SECTIONS = "dedup.report_sections"


def extension(group: str, name: str) -> Any | None:
    """The object registered under ``name`` in ``group``; None when no installed package adds it."""
    found = list(entry_points(group=group, name=name))
    return found[0].load() if found else None


def extensions(group: str) -> dict[str, Any]:
    """Every object registered in ``group``, by name, in name order (a stable CLI and report)."""
    return {ep.name: ep.load() for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}
