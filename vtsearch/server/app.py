"""The HTTP server: a JSON API under ``/api``, the web page at ``/``, and clip-retrieval's
back-end routes (:mod:`.compat`).

Built on Starlette (the ASGI toolkit under FastAPI) and served by uvicorn: small,
well-kept, and it leaves request parsing to us, which clip-retrieval compatibility
needs (JSON bodies without a Content-Type, numbers sent as strings, 400 rather than
422 for a bad field). Model work runs in worker threads, one request per index at a
time, behind a :class:`~.limits.WorkGate` that answers 503 when too many wait.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..errors import ImageDecodeError, QueryError, VtsearchError
from ..search import MAX_K, drop_near_duplicates
from . import compat
from .library import Library, ServedIndex
from .limits import BodyLimit, HTTPError, RouteCORS, SecurityHeaders, WorkGate
from .params import boolean, image_bytes, integer, read_fields, search_filter, string, strings
from .thumbnails import DEFAULT_MAX_BYTES, SIZES

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "TIFF": "image/tiff", "AVIF": "image/avif"}


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 20 * 2**20  # one uploaded image file
    max_upload_pixels: int = 50_000_000  # width × height of an uploaded image
    concurrency: int = 2  # requests doing model work at once (each index runs one at a time)
    queue: int = 64  # requests waiting for that; more get 503
    queue_timeout_s: float = 30.0  # the longest a request waits before 503
    thumbnail_size: int = 256
    thumbnail_cache_bytes: int = DEFAULT_MAX_BYTES  # per index; the least recently served go first
    cors_origins: tuple[str, ...] = ("*",)  # for the clip-retrieval routes only

    @property
    def max_body_bytes(self) -> int:
        """An upload in base64 JSON is 4/3 of the file, plus the other fields."""
        return self.max_upload_bytes * 4 // 3 + 256 * 1024


class Api:
    """The ``/api`` routes over a :class:`Library` of indexes."""

    def __init__(self, library: Library, settings: ServerSettings):
        self.library = library
        self.settings = settings
        self.work = WorkGate(settings.concurrency, settings.queue, settings.queue_timeout_s)
        self.thumbnail_work = WorkGate(settings.concurrency, 4 * settings.queue, settings.queue_timeout_s)

    async def run(self, served: ServedIndex, method, *args: Any, **kwargs: Any) -> Any:
        """Model work: through the gate, then in the index's own thread."""
        async with self.work.slot():
            return await served.run(method, *args, **kwargs)

    def query_image(self, fields: dict[str, Any], served: ServedIndex, *, required: bool) -> bytes | int | None:
        """The query image of a request: an upload (``image``) or an indexed one (``image_id``)."""
        upload = image_bytes(fields, "image", self.settings.max_upload_bytes, self.settings.max_upload_pixels)
        image_id = integer(fields, "image_id", -1, 0, 2**62) if fields.get("image_id") not in (None, "") else None
        if upload is not None and image_id is not None:
            raise HTTPError(400, "give image or image_id, not both")
        if image_id is not None:
            served.row(image_id)
            return image_id
        if upload is None and required:
            raise HTTPError(400, "give an image (a file upload, or base64 in JSON) or an image_id")
        return upload

    async def search(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "index"))
        text = string(fields, "text")
        image = self.query_image(fields, served, required=False)
        if (text is None) == (image is None):
            raise HTTPError(400, "give one query: text, image (upload) or image_id")
        response = await self.run(
            served, served.index.query, text, image=image, k=integer(fields, "k", 10, 1, MAX_K),
            recall_k=integer(fields, "recall_k", 100, 1, MAX_K), rerank=boolean(fields, "rerank", True),
            filters=search_filter(fields),
        )
        found = response.results
        if boolean(fields, "deduplicate", False):
            found = drop_near_duplicates(found, served.index.catalog, served.index.manifest.embed_dim)
        rows = served.index.catalog.rows([result.id for result in found])
        results = []
        for result in found:
            row = rows.get(result.id)
            results.append({**result.to_dict(), "width": row and row.width, "height": row and row.height,
                            "format": row and row.format, "thumbnail": served.image_url(result.id, True),
                            "url": served.image_url(result.id)})
        return JSONResponse({"index": served.name, "reranked": response.reranked,
                             "timings_ms": response.timings_ms, "notices": response.notices,
                             "results": results})

    async def match(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "index"))
        image = self.query_image(fields, served, required=True)
        response = await self.run(
            served, served.index.match, image, k=integer(fields, "k", 10, 1, MAX_K),
            recall_k=integer(fields, "recall_k", 100, 1, MAX_K), rerank=boolean(fields, "rerank", True),
            labels=strings(fields, "labels"),
        )
        return JSONResponse({"index": served.name, "image": response.image, "reranked": response.reranked,
                             "timings_ms": response.timings_ms,
                             "results": [result.to_dict() for result in response.results]})

    async def explain(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "index"))
        if fields.get("image_id") in (None, ""):
            raise HTTPError(400, "give the image_id of an indexed image")
        image_id = integer(fields, "image_id", 0, 0, 2**62)
        served.row(image_id)
        text = string(fields, "text")
        if text is None:
            raise HTTPError(400, "give the query text")
        attention = await self.run(served, served.index.explain, image_id, text)
        return JSONResponse({"index": served.name, **attention.to_dict()})

    async def thumbnail(self, request: Request) -> Response:
        served = self.library.get(request.query_params.get("index"))
        row = served.row(request.path_params["id"])
        size = integer(dict(request.query_params), "size", self.settings.thumbnail_size, 1, max(SIZES))
        async with self.thumbnail_work.slot():
            path = await run_in_threadpool(served.thumbnails.get, row.id, row.path, size)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def original(self, request: Request) -> Response:
        served = self.library.get(request.query_params.get("index"))
        row = served.row(request.path_params["id"])
        if not os.path.isfile(row.path):
            raise HTTPError(404, f"the file of image {row.id} is gone from disk")
        return FileResponse(row.path, media_type=MEDIA_TYPES.get(row.format or "", "application/octet-stream"),
                            filename=os.path.basename(row.path), content_disposition_type="inline")

    async def info(self, request: Request) -> Response:
        name = request.query_params.get("index")
        chosen = [self.library.get(name)] if name is not None else [self.library.get(n) for n in self.library.names]
        indexes = []
        for served in chosen:
            info = await served.run(served.index.info)
            indexes.append({"name": served.name, **info.to_dict()})
        return JSONResponse({"vtsearch_version": __version__, "indexes": indexes})

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", "indexes": self.library.names})

    async def page(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.page),
            Route("/healthz", self.health),
            Route("/api/info", self.info),
            Route("/api/search", self.search, methods=["POST"]),
            Route("/api/match", self.match, methods=["POST"]),
            Route("/api/explain", self.explain, methods=["POST"]),
            Route("/api/images/{id:int}/thumbnail", self.thumbnail),
            Route("/api/images/{id:int}", self.original),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]


def create_app(library: Library, settings: ServerSettings | None = None, close_library: bool = True) -> Starlette:
    """The ASGI app over ``library``; it closes the library when the server stops."""
    settings = settings or ServerSettings()
    api = Api(library, settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        if close_library:
            library.close()

    return Starlette(
        routes=api.routes() + compat.routes(api),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(RouteCORS, paths=compat.PATHS, origins=settings.cors_origins),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
        ],
        exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                            VtsearchError: _vtsearch_error, Exception: _internal_error},
        lifespan=lifespan,
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(_request: Request, error: HTTPError) -> Response:
    return error_response(error.status, error.message, error.headers)


async def _starlette_error(_request: Request, error: HTTPException) -> Response:
    message = {404: "no such route", 405: "method not allowed"}.get(error.status_code, str(error.detail))
    return error_response(error.status_code, message, dict(error.headers or {}))


async def _vtsearch_error(_request: Request, error: VtsearchError) -> Response:
    # what the client asked for cannot be answered (400), or the index itself is unwell (500)
    status = 400 if isinstance(error, (QueryError, ImageDecodeError)) else 500
    return error_response(status, str(error))


async def _internal_error(request: Request, error: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal error (the server log has the details)")
