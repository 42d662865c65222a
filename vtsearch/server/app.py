"""The HTTP server: a JSON API under ``/api`` and the web page at ``/`` (:mod:`.api`), and
clip-retrieval's back-end routes (:mod:`.clip_compat`), over one :class:`~.context.ServerContext`.

Built on Starlette (the ASGI toolkit under FastAPI) and served by uvicorn: small,
well-kept, and it leaves request parsing to us, which clip-retrieval compatibility
needs (JSON bodies without a Content-Type, numbers sent as strings, 400 rather than
422 for a bad field). Model work runs in worker threads, one request per index at a
time, behind a :class:`~.limits.WorkGate` that answers 503 when too many wait.

Library errors become responses here, and only here: :data:`ERROR_STATUS` maps each
error type to its status code, and :data:`HTTP_WORDING` adds the API's own advice where
an error has some (as the CLI adds its flags in :mod:`vtsearch.cli.hints`).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ImageDecodeError, IndexLockedError, NoTextCollectionError, QueryError, VtsearchError
from . import clip_compat
from .api import ApiRoutes
from .clip_compat import ClipRetrievalRoutes
from .context import ServerContext, ServerSettings
from .hosts import TrustedHosts
from .library import Library
from .limits import BodyLimit, HTTPError, RouteCORS, SecurityHeaders
from .responses import JSONResponse

log = logging.getLogger(__name__)

# what the client asked for cannot be answered (400), the index is busy with a writer
# (503, try again), or, for any other library error, the index itself is unwell (500)
ERROR_STATUS: tuple[tuple[type[VtsearchError], int], ...] = (
    (QueryError, 400),
    (ImageDecodeError, 400),
    (IndexLockedError, 503),
)
RETRY_AFTER = {503: {"Retry-After": "1"}}
INTERNAL_ERROR = "internal error (the server log has the details)"
# errors this API has advice of its own for, said in its terms
HTTP_WORDING: dict[type[VtsearchError], str] = {
    NoTextCollectionError: "the index has no text collection to match against; "
                           "/api/match also takes \"labels\", a list of texts",
}


def create_app(library: Library, settings: ServerSettings | None = None, close_library: bool = True) -> Starlette:
    """The ASGI app over ``library``; it closes the library when the server stops."""
    settings = settings or ServerSettings()
    context = ServerContext(library, settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        if close_library:
            library.close()

    return Starlette(
        routes=ApiRoutes(context).routes() + ClipRetrievalRoutes(context).routes(),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHosts, hosts=settings.allowed_hosts),
            Middleware(RouteCORS, paths=clip_compat.PATHS, origins=settings.cors_origins),
            Middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s),
        ],
        exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                            VtsearchError: _vtsearch_error, Exception: _internal_error},
        lifespan=lifespan,
    )


def error_status(error: VtsearchError) -> int:
    """The HTTP status of a library error (see :data:`ERROR_STATUS`)."""
    return next((status for kind, status in ERROR_STATUS if isinstance(error, kind)), 500)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(_request: Request, error: HTTPError) -> Response:
    return error_response(error.status, error.message, error.headers)


async def _starlette_error(_request: Request, error: HTTPException) -> Response:
    message = {404: "no such route", 405: "method not allowed"}.get(error.status_code, str(error.detail))
    return error_response(error.status_code, message, dict(error.headers or {}))


async def _vtsearch_error(request: Request, error: VtsearchError) -> Response:
    status = error_status(error)
    if status == 500:  # the index is unwell: its operator reads why in the log, a client learns nothing
        log.error("%s on %s %s: %s", type(error).__name__, request.method, request.url.path, error)
        return error_response(500, INTERNAL_ERROR)
    message = next((words for kind, words in HTTP_WORDING.items() if isinstance(error, kind)), str(error))
    return error_response(status, message, RETRY_AFTER.get(status))


async def _internal_error(request: Request, error: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, INTERNAL_ERROR)


__all__ = ["ERROR_STATUS", "ServerSettings", "create_app", "error_status"]
