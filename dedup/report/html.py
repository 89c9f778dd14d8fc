"""The report page: one self-contained HTML file rendered from templates/report.html.j2 (inline
CSS, local thumbnails, no script, no network), every value autoescaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def css() -> str:
    return (Path(__file__).with_name("report.css")).read_text(encoding="utf-8")


SECTIONS = (
    ("download", "Download"),
    ("duplicates", "Duplicates"),
    ("ledger", "Ledger"),
    ("galleries", "Galleries"),
    ("memorization", "Memorization"),
    ("settings", "Settings"),
)


def render(context: dict[str, Any]) -> str:
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


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> dict[str, Any]:
    return {
        "headers": headers,
        "rows": [["" if c is None else c for c in r] for r in rows],
        "numeric": set(numeric),
    }


def missing(stage: str, command: str) -> dict[str, str]:
    return {"stage": stage, "command": command}
