"""The ``/api`` routes, the web page at ``/`` and ``/healthz``: search, match and explain
over the served indexes, and the indexed images themselves (originals and thumbnails)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..query.search import MAX_K
from ..records import SearchResult
from .context import ServerContext
from .files import chunks, open_indexed
from .library import MAX_IMAGE_ID, ServedIndex
from .limits import HTTPError
from .params import boolean, integer, read_fields, search_filter, string, strings
from .responses import JSONResponse
from .thumbnails import SIZES

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "TIFF": "image/tiff", "AVIF": "image/avif"}


class ApiRoutes:
    """The ``/api`` routes over the indexes of a :class:`ServerContext`."""

    def __init__(self, context: ServerContext):
        self.context = context
        self.library = context.library

    async def query_image(self, fields: dict[str, Any], served: ServedIndex, *, required: bool) -> bytes | int | None:
        """The query image of a request: an upload (``image``) or an indexed one (``image_id``)."""
        upload = await self.context.upload(fields, "image")
        image_id = integer(fields, "image_id", -1, 0, MAX_IMAGE_ID) if fields.get("image_id") not in (None, "") else None
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
        image = await self.query_image(fields, served, required=False)
        if (text is None) == (image is None):
            raise HTTPError(400, "give one query: text, image (upload) or image_id")
        response = await self.context.run(
            served, served.index.query, text, image=image, k=integer(fields, "k", 10, 1, MAX_K),
            recall_k=integer(fields, "recall_k", None, 1, MAX_K), rerank=boolean(fields, "rerank", True),
            filters=search_filter(fields), deduplicate=boolean(fields, "deduplicate", False),
        )
        return JSONResponse({"index": served.name, "reranked": response.reranked,
                             "timings_ms": response.timings_ms, "notices": response.notices,
                             "results": [_result(served, result) for result in response.results]})

    async def match(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "index"))
        image = await self.query_image(fields, served, required=True)
        response = await self.context.run(
            served, served.index.match, image, k=integer(fields, "k", 10, 1, MAX_K),
            recall_k=integer(fields, "recall_k", None, 1, MAX_K), rerank=boolean(fields, "rerank", True),
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
        image_id = integer(fields, "image_id", 0, 0, MAX_IMAGE_ID)
        served.row(image_id)
        text = string(fields, "text")
        if text is None:
            raise HTTPError(400, "give the query text")
        attention = await self.context.run(served, served.index.explain, image_id, text)
        return JSONResponse({"index": served.name, **attention.to_dict()})

    async def thumbnail(self, request: Request) -> Response:
        served = self.library.get(request.query_params.get("index"))
        row = served.row(path_id(request))
        size = integer(dict(request.query_params), "size", self.context.settings.thumbnail_size, 1, max(SIZES))
        jpeg = await self.context.thumbnail(served, row, size)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def original(self, request: Request) -> Response:
        """The indexed file, only while it is the regular file the index read (:mod:`.files`)."""
        served = self.library.get(request.query_params.get("index"))
        row = served.row(path_id(request))
        handle, size = await run_in_threadpool(open_indexed, row)
        name = quote(os.fsencode(os.path.basename(row.path)))
        media_type = MEDIA_TYPES.get(row.format or "", "application/octet-stream")
        return StreamingResponse(chunks(handle, size), media_type=media_type, headers={
            "Content-Length": str(size), "Content-Disposition": f"inline; filename*=utf-8''{name}"})

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
            Route("/api/images/{id}/thumbnail", self.thumbnail),
            Route("/api/images/{id}", self.original),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]


def path_id(request: Request) -> int:
    """The image id in a route's path: digits (Starlette's int convertor would turn 5,000
    of them into a 500), any other text no route of ours."""
    text = request.path_params["id"]
    if not text.isascii() or not text.isdigit():
        raise HTTPError(404, "no such route")
    if len(text) > 19:
        raise HTTPError(400, f"an image id is between 0 and {MAX_IMAGE_ID}, got {len(text)} digits")
    return int(text)


def _result(served: ServedIndex, result: SearchResult) -> dict[str, Any]:
    """A search result as ``/api/search`` shows it: the ranking, the image's size and
    format (read by the query with its path), and links to the image."""
    return {**result.to_dict(), "width": result.width, "height": result.height, "format": result.format,
            "thumbnail": served.image_url(result.id, True), "url": served.image_url(result.id)}
