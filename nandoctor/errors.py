"""One exception family for everything a user can cause; the CLI turns it into a message and exit 2.

NaN and Inf during training are never exceptions: they are data for the diagnoser.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NandoctorError(Exception):
    """A user-facing error: says what went wrong, where (file, config path) and how to fix it."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 hint: str | None = None):
        self.message = message
        self.file = file
        self.path = path
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """One printable line: control characters from the user's input are shown escaped."""
        where = ": ".join(str(p) for p in (self.file, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        text = f"{text} ({self.hint})" if self.hint else text
        return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class ConfigError(NandoctorError):
    """The config file or an override is wrong."""


class DataError(NandoctorError):
    """A data file or data specification cannot be turned into arrays."""


class RunError(NandoctorError):
    """A run directory is missing, unreadable or from an unknown schema."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid choice, or None when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else None
