"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a row, a key): say which, in one line, and stop.

    Raised before anything is written, so a failed command leaves no half-made output behind.
    """
