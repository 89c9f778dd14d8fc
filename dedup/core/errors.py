"""The exceptions the CLI turns into one line: bad input (exit 2), a broken result (exit 1)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a row, a key): say which, in one line, and stop.

    Raised before anything is written, so a failed command leaves no half-made output behind.
    """


class IntegrityError(Exception):
    """A result that breaks the work dir's invariants (what ``dedup verify`` checks): exit 1, and the
    result is not reported as a success."""
