"""Thumbnails of indexed images: made once, kept on disk, bounded in size.

A thumbnail is named by the image's catalog id and the size and modification time the
catalog holds for its file; it is served only while the file is still that file
(:mod:`.files`), and a file indexed again gets a new one (the old one is deleted).
Each thumbnail is at most 1024 px on its longest side, and the folder at most
``max_bytes``: past that, the least recently served thumbnails are deleted (each hit
refreshes its file's modification time) until it is at 80 %.

The folder is ``DIR/thumbnails`` in the index when this user owns it and it is not
writable by others; otherwise a private per-user cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``, ``vtsearch/thumbnails/<index key>``, created 0700, its owner and mode
checked), or failing that a fresh private temporary folder. Cached files are opened
without following symlinks, and only regular files this user owns are served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path

from ..config import DecodeConfig
from ..decode import decode_bytes
from ..errors import ImageDecodeError
from ..records import ImageRow
from ..store.atomic import write_bytes_atomic
from .files import open_indexed, stat_indexed
from .limits import HTTPError

SIZES = (128, 256, 512, 1024)  # the longest side; a request asks for one of these
JPEG_QUALITY = 85
DEFAULT_MAX_BYTES = 1 << 30
CACHED_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

log = logging.getLogger(__name__)


class ThumbnailCache:
    def __init__(self, index_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = thumbnail_folder(index_dir)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # thumbnails are made in several threads
        self._bytes = sum(_size(file) for file in self.folder.glob("*.jpg"))

    def read(self, row: ImageRow, size: int) -> bytes:
        """The JPEG thumbnail of an indexed image (made when missing), while its file is
        still the one indexed."""
        if size not in SIZES:
            raise HTTPError(400, f"size must be one of {', '.join(map(str, SIZES))}, got {size}")
        stat_indexed(row)
        target = self.folder / f"{row.id}_{size}_{row.size}_{row.mtime_ns}.jpg"
        cached = _read_private(target)
        if cached is not None:
            return cached
        for stale in self.folder.glob(f"{row.id}_{size}_*.jpg"):
            self._forget(stale)
        jpeg = _make(row, size)
        try:
            write_bytes_atomic(target, jpeg)
        except OSError as error:  # a full disk costs the cache, not the answer
            log.warning("cannot cache the thumbnail %s: %s", target, error)
            return jpeg
        with self._lock:
            self._bytes += len(jpeg)
            over = self._bytes > self.max_bytes
        if over:
            self._evict(keep=target)
        return jpeg

    def _forget(self, file: Path) -> None:
        size = _size(file)
        try:
            file.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._bytes -= size

    def _evict(self, keep: Path) -> None:
        """Delete the least recently served thumbnails until the folder is at 80 % of its cap."""
        files = sorted(((_mtime(file), file) for file in self.folder.glob("*.jpg")), key=lambda item: item[0])
        for _, file in files:
            if self._bytes <= 0.8 * self.max_bytes:
                break
            if file != keep:
                self._forget(file)


def _make(row: ImageRow, size: int) -> bytes:
    """A new JPEG thumbnail of the row's file, read through one checked descriptor."""
    config = DecodeConfig(image_size=size, draft=True)  # the index took it under these limits
    handle, _ = open_indexed(row)
    try:
        with handle:
            data = handle.read()
    except OSError as error:
        raise HTTPError(404, f"the file of image {row.id} cannot be read: {error.strerror}") from None
    try:
        image = decode_bytes(data, f"the file of image {row.id}", config)
    except ImageDecodeError as error:
        raise HTTPError(404, str(error)) from None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _read_private(file: Path) -> bytes | None:
    """A cached thumbnail's bytes, marked as served now; None when there is none, or when
    what lies there is not a regular file of this user's (a symlink is never followed)."""
    try:
        descriptor = os.open(file, CACHED_FLAGS)
    except OSError:  # missing, or a symlink (ELOOP), or unreadable: made again
        return None
    with os.fdopen(descriptor, "rb") as handle:
        found = os.fstat(descriptor)
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
            return None
        os.utime(descriptor)  # served now: the last to be evicted
        return handle.read()


def _size(file: Path) -> int:
    try:
        return file.lstat().st_size
    except FileNotFoundError:
        return 0


def _mtime(file: Path) -> int:
    try:
        return file.lstat().st_mtime_ns
    except FileNotFoundError:
        return 0


def thumbnail_folder(index_dir: Path) -> Path:
    """Where thumbnails of the index at ``index_dir`` are kept (see the module's text)."""
    folder = Path(index_dir) / "thumbnails"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if _owned_folder(folder, forbidden=stat.S_IWOTH) and os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    key = hashlib.sha1(str(Path(index_dir).resolve()).encode()).hexdigest()[:16]
    try:
        return _private_folder(user_cache_dir() / "vtsearch" / "thumbnails" / key)
    except (OSError, RuntimeError) as error:  # RuntimeError: no home folder
        log.warning("no private thumbnail cache (%s); using a temporary folder", error)
        return Path(tempfile.mkdtemp(prefix=f"vtsearch-thumbnails-{key}-"))  # 0700, a name no one can guess


def user_cache_dir() -> Path:
    configured = os.environ.get("XDG_CACHE_HOME", "")
    return Path(configured) if os.path.isabs(configured) else Path.home() / ".cache"


def _private_folder(folder: Path) -> Path:
    """``folder``, created 0700 where missing; OSError unless it is a real folder of this
    user's that no one else can enter, in folders of this user's that no one else can
    write to (so no one can swap it for their own)."""
    missing = []
    for level in (folder, *folder.parents):
        if level.exists():
            break
        missing.append(level)
    for level in reversed(missing):  # each made 0700 (parents=True would follow the umask)
        level.mkdir(mode=0o700, exist_ok=True)
    group_and_others = stat.S_IRWXG | stat.S_IRWXO
    if not _owned_folder(folder, forbidden=group_and_others):
        raise OSError(f"{folder} is not a folder of this user's that only this user can open")
    for level in (folder.parent, folder.parent.parent):
        if not _owned_folder(level, forbidden=stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(f"{level} is not a folder of this user's that only this user can write to")
    return folder


def _owned_folder(folder: Path, forbidden: int) -> bool:
    """A real folder (not a symlink), owned by this user, with none of the ``forbidden`` mode bits."""
    found = folder.lstat()
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid() and not found.st_mode & forbidden
