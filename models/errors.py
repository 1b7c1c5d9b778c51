"""The one error a model file raises, so callers can catch it without knowing which file failed."""

from __future__ import annotations


class ModelFileError(FileNotFoundError, ValueError):
    """A model file or folder is missing, unreadable, or does not match what it claims to hold.

    The message names the file and says how to fix it. It subclasses both FileNotFoundError and
    ValueError so existing ``except`` clauses for either keep working.
    """
