"""User-facing errors.

Each one carries a single line that says what went wrong and how to fix it; the CLI prints it without a
traceback. Every class also derives from the builtin a caller would expect (``ValueError`` for bad
configuration, ``FileNotFoundError`` for missing data), so library users can catch either.
"""

from __future__ import annotations


class RlpruneError(Exception):
    """Base class: a one-line, user-facing error the CLI prints without a traceback."""


class ConfigError(RlpruneError, ValueError):
    """A setting, name or ``module:callable`` spec that cannot be used as given."""


class DataError(RlpruneError, FileNotFoundError):
    """A data set that is missing or does not have the expected layout."""


class TraceError(RlpruneError, RuntimeError):
    """A model that torch-pruning cannot trace into dependency groups."""


class SampleStoreError(RlpruneError, ValueError):
    """A sample store that is unreadable or does not match the current task and model."""


class CheckpointError(RlpruneError, ValueError):
    """A checkpoint that is missing, corrupt or made for another task or model."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "RlpruneError",
    "SampleStoreError",
    "TraceError",
]
