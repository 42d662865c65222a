"""The files behind catalog rows, opened only while they are still what the index read.

A row's path was a regular file of ``size`` bytes modified at ``mtime_ns`` when it was
indexed (following symlinks, as the scan does). Since then the file may have changed
or gone, or a symlink may point elsewhere (``/etc/passwd``, a FIFO that would block
the reader). A served file is opened once and checked through its descriptor, so
nothing can be swapped in between the check and the read; anything else is refused
with a reason: 404 gone, 409 changed.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Iterator

from ..records import ImageRow
from .limits import HTTPError

CHUNK_BYTES = 256 * 1024
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_indexed(row: ImageRow) -> tuple[BinaryIO, int]:
    """The file of ``row``, open for reading, and its size; :class:`HTTPError` when it is
    gone (404) or is no longer the regular file of that size and time (409)."""
    try:
        descriptor = os.open(row.path, OPEN_FLAGS)  # O_NONBLOCK: a FIFO put there must not hang us
    except FileNotFoundError:
        raise HTTPError(404, f"the file of image {row.id} is gone from disk") from None
    except OSError as error:
        raise HTTPError(404, f"the file of image {row.id} cannot be read: {error.strerror}") from None
    try:
        found = os.fstat(descriptor)
        check_unchanged(row, found)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb"), found.st_size
    except BaseException:
        os.close(descriptor)
        raise


def check_unchanged(row: ImageRow, found: os.stat_result) -> None:
    """409 unless ``found`` (a stat of the row's path) is the regular file the index read."""
    if not stat.S_ISREG(found.st_mode):
        raise HTTPError(409, f"the path of image {row.id} is no longer a regular file")
    if (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns):
        raise HTTPError(409, f"the file of image {row.id} has changed since it was indexed; "
                             "it is served again once the index is brought up to date")


def stat_indexed(row: ImageRow) -> None:
    """The checks of :func:`open_indexed` without opening the file (for a cached thumbnail)."""
    try:
        found = os.stat(row.path)
    except FileNotFoundError:
        raise HTTPError(404, f"the file of image {row.id} is gone from disk") from None
    except OSError as error:
        raise HTTPError(404, f"the file of image {row.id} cannot be read: {error.strerror}") from None
    check_unchanged(row, found)


def chunks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    """The file's first ``size`` bytes (what Content-Length promised, however the file
    changes meanwhile) in chunks; the file is closed at the end (or when the client leaves)."""
    with handle:
        while size > 0 and (chunk := handle.read(min(CHUNK_BYTES, size))):
            size -= len(chunk)
            yield chunk


__all__ = ["open_indexed", "stat_indexed", "chunks"]
