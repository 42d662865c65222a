"""What the ``/api`` routes and clip-retrieval's routes share: the library of served
indexes, the server's settings, and the gates that model and thumbnail work pass.

Both route sets (:mod:`.api`, :mod:`.clip_compat`) take a :class:`ServerContext` and
nothing else, so neither depends on the other and :mod:`.app` only assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from starlette.concurrency import run_in_threadpool

from ..records import ImageRow
from .hosts import LOOPBACK_HOSTS
from .library import Library, ServedIndex
from .limits import WorkGate
from .params import image_bytes
from .thumbnails import DEFAULT_MAX_BYTES

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 20 * 2**20  # one uploaded image file
    max_upload_pixels: int = 50_000_000  # width × height of an uploaded image
    concurrency: int = 2  # requests doing model work at once (each index runs one at a time)
    queue: int = 64  # requests waiting for that; more get 503
    queue_timeout_s: float = 30.0  # the longest a request waits before 503
    thumbnail_size: int = 256
    thumbnail_cache_bytes: int = DEFAULT_MAX_BYTES  # per index; the least recently served go first
    cors_origins: tuple[str, ...] = ()  # may call the clip-retrieval routes from a browser; none by default
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # the Host names answered (see .hosts)
    body_timeout_s: float = 60.0  # a request body must have arrived by then (408)

    @property
    def max_body_bytes(self) -> int:
        """An upload in base64 JSON is 4/3 of the file, plus the other fields."""
        return self.max_upload_bytes * 4 // 3 + 256 * 1024


class ServerContext:
    """The served indexes and how work on them is admitted.

    Model work passes one gate; thumbnails another, with a longer queue, since a page of
    results asks for many at once and each is cheap once made."""

    def __init__(self, library: Library, settings: ServerSettings):
        self.library = library
        self.settings = settings
        self.work = WorkGate(settings.concurrency, settings.queue, settings.queue_timeout_s)
        self.thumbnail_work = WorkGate(settings.concurrency, 4 * settings.queue, settings.queue_timeout_s)

    async def run(self, served: ServedIndex, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Model work: through the gate, then in the index's own thread."""
        async with self.work.slot():
            return await served.run(method, *args, **kwargs)

    async def thumbnail(self, served: ServedIndex, row: ImageRow, size: int | None = None) -> bytes:
        """The JPEG thumbnail of an indexed image (at the configured size by default), made when missing."""
        async with self.thumbnail_work.slot():
            return await run_in_threadpool(served.thumbnails.read, row,
                                          self.settings.thumbnail_size if size is None else size)

    async def upload(self, fields: dict[str, Any], name: str = "image") -> bytes | None:
        """An uploaded query image, within the server's upload limits (checked off the event
        loop: reading a crafted header can take seconds)."""
        return await run_in_threadpool(image_bytes, fields, name, self.settings.max_upload_bytes,
                                       self.settings.max_upload_pixels)
