"""User-facing errors.

Every mistake a user can make (a bad config key, a missing file, an unsupported model) is raised as a
:class:`TaskpruneError` whose message is one line naming the key or file and what was expected. The CLI
prints that line and exits non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class TaskpruneError(Exception):
    """An error caused by the user's input, reported as a single line without a traceback."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # Collapse to one line: the contract is "one line naming the field or file".
        super().__init__(" ".join(str(message).split()))


class ConfigError(TaskpruneError):
    """A config key or value is wrong."""


class DataError(TaskpruneError):
    """An input file (dataset, statistics, scores, checkpoint) is missing, empty or malformed."""


class ModelError(TaskpruneError):
    """A model cannot be handled (unsupported architecture, missing shards, shape mismatch)."""
