"""The indexes one server serves, by name, each used by one request at a time."""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import quote

from ..index import Index
from ..records import ImageRow
from ..store.catalog import INDEXED
from .limits import HTTPError, shown
from .thumbnails import DEFAULT_MAX_BYTES, ThumbnailCache

T = TypeVar("T")
MAX_IMAGE_ID = 2**62  # catalog ids are 64-bit signed integers


class ServedIndex:
    """One open :class:`Index` and the one thread its model work runs in.

    One at a time, because an ``Index`` is not meant for concurrent queries, and on a
    CPU they would only fight over the same cores. Always the same thread, because
    torch's OpenMP pool belongs to the thread that calls it: a query from a fresh pool
    thread each time starts a new team of spinning OpenMP threads, and measured here
    that made served queries run at 0.6 of the in-process rate."""

    def __init__(self, name: str, index: Index, thumbnail_cache_bytes: int = DEFAULT_MAX_BYTES):
        self.name = name
        self.index = index
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vtsearch-{name}")
        self.thumbnails = ThumbnailCache(index.path, thumbnail_cache_bytes)

    def warm_up(self) -> None:
        """Load the model and the scorer by running one query in this index's thread: the
        first user's query should not pay for loading (seconds for ViT-B-32)."""
        self.worker.submit(self._first_query).result()

    def _first_query(self) -> None:
        self.index.query("a photo", k=1)  # loads the encoder and reranker.pt

    async def run(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``method`` in this index's thread, after the work queued before it."""
        call = functools.partial(method, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.worker, call)

    def row(self, image_id: int) -> ImageRow:
        """The catalog row of an indexed image: 400 for an id no catalog can hold, 404 when
        the index has no image with this id, or only a file it skipped (not an image)."""
        if not 0 <= image_id <= MAX_IMAGE_ID:
            raise HTTPError(400, f"an image id is between 0 and {MAX_IMAGE_ID}, got {shown(image_id)}")
        row = self.index.image_row(image_id)
        if row is None:
            raise HTTPError(404, f"index {self.name!r} has no image with id {image_id}")
        if row.status != INDEXED:
            raise HTTPError(404, f"index {self.name!r} has no image with id {image_id} "
                                 "(its file was skipped when indexing)")
        return row

    def indexed_rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """The rows of those ``ids`` that are indexed images (ids in the catalog's range)."""
        rows = self.index.image_rows([i for i in ids if 0 <= i <= MAX_IMAGE_ID])
        return {image_id: row for image_id, row in rows.items() if row.status == INDEXED}

    def image_url(self, image_id: int, thumbnail: bool = False) -> str:
        return f"/api/images/{image_id}{'/thumbnail' if thumbnail else ''}?index={quote(self.name)}"


class Library:
    def __init__(self, served: Sequence[ServedIndex]):
        if not served:
            raise ValueError("a server needs at least one index")
        self._served = {item.name: item for item in served}

    @classmethod
    def open(cls, folders: Sequence[str | os.PathLike[str]], device: str = "auto",
             warm_up: bool = True, thumbnail_cache_bytes: int = DEFAULT_MAX_BYTES) -> "Library":
        """Open each index folder; each is named by its folder (``name-2`` for a repeat)."""
        served: list[ServedIndex] = []
        try:
            for folder in folders:
                base = Path(folder).resolve().name or "index"
                name, number = base, 1
                while any(item.name == name for item in served):
                    number += 1
                    name = f"{base}-{number}"
                served.append(ServedIndex(name, Index.open(folder, device=device), thumbnail_cache_bytes))
                if warm_up:
                    served[-1].warm_up()
        except BaseException:
            for item in served:
                item.index.close()
            raise
        return cls(served)

    @property
    def names(self) -> list[str]:
        return list(self._served)

    def get(self, name: str | None) -> ServedIndex:
        """The index called ``name``; the first one when ``name`` is None."""
        if name is None:
            return next(iter(self._served.values()))
        served = self._served.get(name)
        if served is None:
            raise HTTPError(404, f"no index named {name!r}; this server has: {', '.join(self._served)}")
        return served

    def close(self) -> None:
        for served in self._served.values():
            served.worker.shutdown(wait=True)
            served.index.close()
