"""User-facing errors.

A ``WsisError`` is bad input or a bad request: the CLI prints its message on one line and
exits non-zero, without a traceback. Anything else is a bug and keeps its traceback.
"""


class WsisError(Exception):
    """An error caused by the user's input (data, config, command line)."""

    def __init__(self, message: str):
        # one line, always: the CLI promises a single-line diagnosis
        super().__init__(" ".join(str(message).split()))


class DataError(WsisError):
    """A dataset file is missing, corrupt or inconsistent."""


class ConfigError(WsisError):
    """A config file, key or value is invalid, or contradicts what is on disk."""
