"""Errors vtsearch raises to its callers.

Every error a user can cause derives from :class:`VtsearchError` and carries a message
fit to print as is; the CLI prints ``str(error)`` on one line and exits non-zero.
Per-file decode failures are not exceptions at this level: they become recorded skips
(:class:`vtsearch.records.DecodeFailure`).
"""

from __future__ import annotations


class VtsearchError(Exception):
    """Base class: a failure with a message meant for the user."""


class ModelLoadError(VtsearchError):
    """An open_clip model or its weights could not be loaded."""


class IndexNotFoundError(VtsearchError):
    """The index directory does not exist or holds no index."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class IndexExistsError(VtsearchError):
    """Creating an index where one already exists."""


class IndexLockedError(VtsearchError):
    """Another process holds the index's writer lock."""

    def __init__(self, path: str, pid: int | None, holder: str = "another process"):
        holder = f"pid {pid}" if pid else holder
        super().__init__(
            f"index {path} is locked by {holder}; wait for it to finish "
            "(only one writer at a time)"
        )
        self.pid = pid


class ModelMismatchError(VtsearchError):
    """The requested encoder differs from the one the index was built with."""


class IndexFormatError(VtsearchError):
    """The index files are from an unknown schema version or are damaged."""


class QueryError(VtsearchError):
    """A search request that cannot be answered as asked (empty text, bad k, ...)."""


class NoTextCollectionError(QueryError):
    """Image → text matching against a collection the index does not have."""


class ImageDecodeError(VtsearchError):
    """A query image could not be decoded (indexed files become recorded skips instead)."""
