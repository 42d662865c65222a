"""Thumbnails of indexed images: made once, kept on disk, bounded in size.

A thumbnail is named by the image's catalog id and its file's size and modification
time, so a file changed since is thumbnailed again (and the old one deleted). The
folder is ``DIR/thumbnails`` in the index, or a per-index temporary folder when the
index is read-only to the server. Each thumbnail is at most 1024 px on its longest side,
and the folder at most ``max_bytes``: past that, the least recently served thumbnails
are deleted (each hit refreshes its file's modification time) until it is at 80 %.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from ..config import DecodeConfig
from ..decode import decode_bytes
from ..errors import ImageDecodeError
from ..store.atomic import atomic_path
from .limits import HTTPError

SIZES = (128, 256, 512, 1024)  # the longest side; a request asks for one of these
JPEG_QUALITY = 85
DEFAULT_MAX_BYTES = 1 << 30


class ThumbnailCache:
    def __init__(self, index_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = _writable_folder(index_dir)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # thumbnails are made in several threads
        self._bytes = sum(_size(file) for file in self.folder.glob("*.jpg"))

    def get(self, image_id: int, path: str, size: int) -> Path:
        """The JPEG thumbnail of ``path`` (catalog id ``image_id``), made when missing."""
        if size not in SIZES:
            raise HTTPError(400, f"size must be one of {', '.join(map(str, SIZES))}, got {size}")
        try:
            stat = os.stat(path)
        except OSError as error:
            raise HTTPError(404, f"the file of image {image_id} cannot be read: {error.strerror}") from None
        target = self.folder / f"{image_id}_{size}_{stat.st_size}_{stat.st_mtime_ns}.jpg"
        try:
            os.utime(target)  # served now: the last to be evicted
            return target
        except FileNotFoundError:
            pass
        for stale in self.folder.glob(f"{image_id}_{size}_*.jpg"):
            self._forget(stale)
        config = DecodeConfig(image_size=size, draft=True)  # the index took it under these limits
        try:
            with open(path, "rb") as handle:
                image = decode_bytes(handle.read(), f"the file of image {image_id}", config)
        except OSError as error:
            raise HTTPError(404, f"the file of image {image_id} cannot be read: {error.strerror}") from None
        except ImageDecodeError as error:
            raise HTTPError(404, str(error)) from None
        image.thumbnail((size, size))
        with atomic_path(target) as temp:
            image.save(temp, format="JPEG", quality=JPEG_QUALITY)
        with self._lock:
            self._bytes += _size(target)
            over = self._bytes > self.max_bytes
        if over:
            self._evict(keep=target)
        return target

    def read(self, image_id: int, path: str, size: int) -> bytes:
        """The thumbnail's JPEG bytes (made when missing)."""
        return self.get(image_id, path, size).read_bytes()

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
        files = sorted(((file.stat().st_mtime_ns, file) for file in self.folder.glob("*.jpg")
                        if file.exists()), key=lambda item: item[0])
        for _, file in files:
            if self._bytes <= 0.8 * self.max_bytes:
                break
            if file != keep:
                self._forget(file)


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except FileNotFoundError:
        return 0


def _writable_folder(index_dir: Path) -> Path:
    folder = index_dir / "thumbnails"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    key = hashlib.sha1(str(index_dir.resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"vtsearch-thumbnails-{key}"
    folder.mkdir(exist_ok=True)
    return folder
