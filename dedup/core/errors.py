"""The exceptions the CLI turns into one line: bad input (exit 2), a broken result (exit 1)."""

from __future__ import annotations

import re

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


class UserError(Exception):
    """Bad input from the user (a file, a row, a key): say which, in one line, and stop.

    Raised before anything is written, so a failed command leaves no half-made output behind.
    """


class IntegrityError(Exception):
    """A result that breaks the work dir's invariants (what ``dedup verify`` checks): exit 1, and the
    result is not reported as a success."""


def describe(err: BaseException, width: int = 120) -> str:
    """An exception's first line as recorded in a ledger row or a message: no memory address (so a
    rerun writes the same bytes), at most ``width`` characters, the type's name when it says nothing."""
    text = str(err).strip()
    first = _ADDRESS.sub("", text.splitlines()[0]) if text else type(err).__name__
    return first[:width]
