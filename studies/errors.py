"""The mistakes the studies report in one line instead of a traceback.

Every error a user or the environment can cause (a wrong setting, a corrupt or foreign
file, a run directory in use or recorded under another configuration) is a
:class:`StudyError`; the ``soensim-study`` CLI prints its message on one line and exits
with code 2. The messages name the field or the file.
"""
from __future__ import annotations


class StudyError(Exception):
    """An input or environment mistake; the message says what and where (field or file)."""


class ConfigError(StudyError, ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


class DataError(StudyError, ValueError):
    """A file (dataset, JSON record, checkpoint) is corrupt or not in the expected format;
    the message names the file."""


class RunDirError(StudyError, RuntimeError):
    """A run or study directory cannot be used as asked."""


class ConfigMismatch(RunDirError):
    """A run directory holds results of another configuration; the message lists the
    fields that differ and how to start over."""


class LockedError(RunDirError):
    """Another process is writing the directory; the message names its PID."""


#: Errors that stop a grid instead of being recorded as one failed run (the environment's or the files').
ENVIRONMENT_ERRORS = (OSError, DataError, RunDirError)

__all__ = ["ENVIRONMENT_ERRORS", "ConfigError", "ConfigMismatch", "DataError", "LockedError", "RunDirError", "StudyError"]
