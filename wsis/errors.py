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


class DiskFullError(WsisError):
    """The file system ran out of space while writing ``path``; what was written is removed,
    finished outputs stay, and a rerun after freeing space resumes."""

    def __init__(self, path, needed: int = 0, free: int = 0):
        # needed: the file's size when known, else what was written before the disk filled
        self.path, self.needed, self.free = str(path), int(needed), int(free)
        super().__init__(f"{path}: no space left on device ({free / 2**20:.1f} MiB free, "
                         f"{needed / 2**20:.1f} MiB needed for this file)")

    def __reduce__(self):   # raised in Dask workers: must survive pickling
        return type(self), (self.path, self.needed, self.free)
