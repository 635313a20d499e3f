"""User-facing errors: one line naming the file or config key and what to do."""
from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user; printed as one line, exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config key holds a bad value."""


class DataError(UserError):
    """A dataset file or folder is missing or unreadable."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError(f"{key}: {message}") unless condition holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def console_line(text: str) -> str:
    """``text`` as one console line: newlines and escape sequences (from file or category names)
    shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr as one console line (a preset's dataset.root may hold ESC)."""
    print(f"error: {console_line(message)}", file=sys.stderr)


def refuse(message: str) -> NoReturn:
    """``error: <message>`` on stderr and exit 2: for Hydra callbacks, which turn an exception
    into a warning and go on."""
    print_error(message)
    sys.exit(2)
