"""The index's writer lock: one writer at a time, readers never wait for it.

An ``flock`` on ``DIR/.writer.lock``; the kernel drops it when the holder dies, so a
lock left by a killed process is taken over by the next writer with no clean-up. The
holder's pid is written into the file for the "locked by pid N" message.

An ``flock`` belongs to the open file, which a forked child shares: a decode worker that
outlived a killed writer would keep the lock for as long as it lives. So the file is
opened close-on-exec, and a forked child closes its copy at once (``os.register_at_fork``):
the lock stays the writer's alone, and dies with it.

A catalog on a PostgreSQL server may be written from several hosts whose ``flock`` on
shared storage cannot be trusted; there the writer also holds a session advisory lock on
the server (:class:`vtsearch.store.catalog.ServerLock`), which the server drops when the
holder's connection ends.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path
from typing import Protocol

from ..errors import IndexLockedError

LOCK_NAME = ".writer.lock"


class SecondLock(Protocol):
    """A lock held together with the file lock (a catalog server's advisory lock)."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...

    def held_elsewhere(self) -> bool: ...

    def forget(self) -> None: ...  # in a forked child: let go of the parent's lock, keep nothing alive


_HELD: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()  # this process's locks, for forked children


def _drop_in_child() -> None:
    """In a forked child: close the inherited lock files, and forget them (the child must
    neither keep the lock alive nor release the parent's)."""
    for lock in list(_HELD):
        lock.forget()


os.register_at_fork(after_in_child=_drop_in_child)


class WriterLock:
    def __init__(self, folder: Path, second: SecondLock | None = None):
        self.path = folder / LOCK_NAME
        self.second = second
        self._handle: int | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        if self._handle is not None:
            return
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(handle)
            os.close(handle)
            raise IndexLockedError(str(self.path.parent), pid) from None
        if self.second is not None and not self.second.try_acquire():
            fcntl.flock(handle, fcntl.LOCK_UN)
            os.close(handle)
            raise IndexLockedError(str(self.path.parent), None, "a writer on another host")
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle
        _HELD.add(self)

    def is_held_elsewhere(self) -> bool:
        """True when another process is writing right now (a cheap, racy probe)."""
        if self._handle is not None:
            return False
        if self.second is not None and self.second.held_elsewhere():
            return True
        if not self.path.exists():
            return False
        handle = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(handle)
        return False

    def release(self) -> None:
        if self._handle is None:
            return
        if self.second is not None:
            self.second.release()
        os.ftruncate(self._handle, 0)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None
        _HELD.discard(self)

    def forget(self) -> None:
        """Close this process's copy of a lock another process holds (a forked child's):
        the lock itself is neither released nor kept alive by it."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
        if self.second is not None:
            self.second.forget()
        _HELD.discard(self)


def _read_pid(handle: int) -> int | None:
    try:
        text = os.pread(handle, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
