"""Errors that the CLI turns into one clear message and exit status 2 (no traceback)."""
from __future__ import annotations


class FreqdError(Exception):
    """A user-facing error: bad input, bad option, incompatible files.

    The message must name the file (and line) or the option at fault. The CLI prints
    ``freqd: error: <message>`` and exits with status 2.
    """

    exit_code = 2


class DataError(FreqdError):
    """Malformed or unusable interaction data."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ConfigError(FreqdError):
    """An unknown, misspelt, ill-typed or out-of-range option, or incompatible options."""


class CheckpointError(FreqdError):
    """A checkpoint or run directory that is missing, corrupt or does not match the data."""
