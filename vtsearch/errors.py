"""Errors vtsearch raises to its callers.

Every error a user can cause derives from :class:`VtsearchError` and carries a message
fit for every caller (a Python program, the HTTP server, the CLI): it says what went
wrong and names no command-line flag. Where a caller's advice needs facts, the error
carries them as attributes (the missing index's ``path``, the ``requested`` encoder, ...);
the CLI turns them into advice by error type (:mod:`vtsearch.cli.hints`), the server into
a status code. Per-file decode failures are not exceptions at this level: they become
recorded skips (:class:`vtsearch.records.DecodeFailure`).
"""

from __future__ import annotations

from typing import Sequence


class VtsearchError(Exception):
    """Base class: a failure with a message meant for the user."""

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and data, not by calling its constructor again (whose
        # arguments differ by type): errors cross processes, from Ray workers to the driver.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(kind: type[VtsearchError], args: tuple, data: dict) -> VtsearchError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(data)
    return error


class ModelLoadError(VtsearchError):
    """An open_clip model or its weights could not be loaded (``offline``: its weights had
    to be fetched, and could not be)."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


class PretrainedTagMissingError(ModelLoadError):
    """A built-in ``model`` named without a pretrained tag, so without weights to load."""

    def __init__(self, message: str, model: str, known_tags: Sequence[str]):
        super().__init__(message)
        self.model = model
        self.known_tags = tuple(known_tags)


class MissingExtraError(ModelLoadError):
    """The model needs an optional ``package`` that is not installed; vtsearch's ``extra``
    of that name installs it."""

    def __init__(self, message: str, package: str, extra: str):
        super().__init__(message)
        self.package = package
        self.extra = extra


class IndexNotFoundError(VtsearchError):
    """The index directory does not exist or holds no index."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class IndexExistsError(VtsearchError):
    """Creating an index where one already exists."""


class CatalogMismatchError(IndexExistsError):
    """The index at ``path`` keeps its catalog in ``catalog``, not the ``requested`` one."""

    def __init__(self, message: str, path: str, catalog: str, requested: str):
        super().__init__(message)
        self.path = path
        self.catalog = catalog
        self.requested = requested


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
    """The encoder differs from the one the index at ``path`` was built with: another one
    was ``requested`` than the ``stored`` one (descriptions; None where not known)."""

    def __init__(self, message: str, path: str | None = None, stored: str | None = None,
                 requested: str | None = None):
        super().__init__(message)
        self.path = path
        self.stored = stored
        self.requested = requested


class WeightsChangedError(ModelMismatchError):
    """The index's own encoder, by name, no longer has the weights the index was built with."""


class IndexFormatError(VtsearchError):
    """The index files are from an unknown schema version or are damaged."""


class NeedsRepairError(IndexFormatError):
    """The parts of an index disagree in a way ``check --repair`` fixes (regions missing or
    past the end of the region store)."""


class RerankerMismatchError(VtsearchError):
    """The trained reranker was made for another encoder's token and region widths."""


class CatalogDamagedError(IndexFormatError):
    """The catalog at ``location`` cannot be read; ``reason`` is the database's own word."""

    def __init__(self, message: str, location: str, reason: str):
        super().__init__(message)
        self.location = location
        self.reason = reason


class QueryError(VtsearchError):
    """A search request that cannot be answered as asked (empty text, bad k, ...)."""


class NoTextCollectionError(QueryError):
    """Image → text matching against a collection the index does not have."""


class ImageDecodeError(VtsearchError):
    """A query image could not be decoded (indexed files become recorded skips instead)."""


class DeviceUnavailableError(VtsearchError):
    """The compute ``device`` asked for (``"cuda"``) is not on this machine."""

    def __init__(self, message: str, device: str):
        super().__init__(message)
        self.device = device


class RayNotInstalledError(VtsearchError):
    """Distributed embedding asked for, without Ray; ``install`` is the command that adds it."""

    def __init__(self, message: str, install: str):
        super().__init__(message)
        self.install = install


class NotEnoughGpusError(VtsearchError):
    """The Ray cluster has ``available`` GPUs, fewer than one worker asks for (``per_worker``)."""

    def __init__(self, message: str, available: float, per_worker: float):
        super().__init__(message)
        self.available = available
        self.per_worker = per_worker


# The advice for loading a model with no network: the CLI adds it to an offline load failure
# (ModelLoadError.offline); the not-cached message carries it itself.
OFFLINE_ADVICE = (
    "without network access, point --model at a local open_clip folder: "
    "--model local-dir:/path/to/model (open_clip_config.json + open_clip_model.safetensors)"
)
