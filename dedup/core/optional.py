"""Optional heavy dependencies behind one helper: a missing extra becomes an actionable message."""

from __future__ import annotations

import importlib
from types import ModuleType

from dedup.core.errors import UserError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the '{module}' package: pip install 'dedup[{extra}]'") from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
