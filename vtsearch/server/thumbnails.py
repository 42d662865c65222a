"""Thumbnails of indexed images: made once, kept on disk, bounded in size.

A thumbnail is named by the image's catalog id and its file's size and modification
time, so a file changed since is thumbnailed again (and the old one deleted). The
folder is ``DIR/thumbnails`` in the index, or a per-index temporary folder when the
index is read-only to the server.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..atomic import atomic_path
from ..config import DecodeConfig
from ..decode import decode_bytes
from ..errors import ImageDecodeError
from .limits import HTTPError

SIZES = (128, 256, 512, 1024)  # the longest side; a request asks for one of these
JPEG_QUALITY = 85


class ThumbnailCache:
    def __init__(self, index_dir: Path):
        self.folder = _writable_folder(index_dir)

    def get(self, image_id: int, path: str, size: int) -> Path:
        """The JPEG thumbnail of ``path`` (catalog id ``image_id``), made when missing."""
        if size not in SIZES:
            raise HTTPError(400, f"size must be one of {', '.join(map(str, SIZES))}, got {size}")
        try:
            stat = os.stat(path)
        except OSError as error:
            raise HTTPError(404, f"the file of image {image_id} cannot be read: {error.strerror}") from None
        target = self.folder / f"{image_id}_{size}_{stat.st_size}_{stat.st_mtime_ns}.jpg"
        if target.is_file():
            return target
        for stale in self.folder.glob(f"{image_id}_{size}_*.jpg"):
            stale.unlink(missing_ok=True)
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
        return target


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
