"""User-facing errors: one line naming the file or config key and what to do."""


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
