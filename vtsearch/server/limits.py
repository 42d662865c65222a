"""What one client can make the server do: body size and time, concurrent model work,
and CORS only on the routes that need it (and only for the origins given)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HTTPError(Exception):
    """A request the server refuses, with the status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message quotes it: its repr, cut to ``limit`` characters (a
    client's 5,000-digit number or 10 MB string is not sent back)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether the client announces
    the length or streams the body, and bodies still arriving ``timeout_s`` after the
    request began with 408 (a client dripping its body holds a connection no longer):
    reading past either raises :class:`HTTPError`, which the app's error handler turns
    into the response."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 60.0):
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = HTTPError(413, f"the request body is over the server's limit of {self.limit:,} bytes")
        too_slow = HTTPError(408, f"the request body did not arrive within {self.timeout_s:g} s")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                receive = _refuse(too_large)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received, complete = 0, False

        async def counted() -> Message:
            nonlocal received, complete
            if complete:  # later calls wait for the disconnect, as long as a response streams
                return await receive()
            try:  # a message already there is taken even past the deadline
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.5))
            except asyncio.TimeoutError:
                raise too_slow from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large
                if not complete and loop.time() > deadline:
                    raise too_slow
            return message

        await self.app(scope, counted, send)


def _refuse(error: HTTPError) -> Receive:
    async def receive() -> Message:
        raise error

    return receive


class RouteCORS:
    """Starlette's CORS middleware on the listed paths only (the clip-retrieval routes,
    which a front end on another origin may call) and for the listed origins only; with
    none (the default) and on every other route, browsers keep other origins out."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], origins: Iterable[str]):
        self.app = app
        self.paths = frozenset(paths)
        origins = list(origins)
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST"],
                                   allow_headers=["*"]) if origins else app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.cors if scope["type"] == "http" and scope["path"] in self.paths else self.app
        await target(scope, receive, send)


class SecurityHeaders:
    """No MIME sniffing, no framing, and a same-origin content policy on every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy",
         b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'"),
    ]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


class WorkGate:
    """At most ``concurrency`` requests do heavy work at once; at most ``queue`` more wait,
    each for at most ``wait_s`` seconds. Beyond that the server answers 503 at once
    rather than letting a burst pile up memory and latency."""

    def __init__(self, concurrency: int, queue: int, wait_s: float):
        self.concurrency = concurrency
        self.queue = queue
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            await self._wait()
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            yield
        finally:
            self._slots.release()

    async def _wait(self) -> None:
        if self._waiting >= self.queue:
            raise HTTPError(503, f"the server is busy ({self._waiting} requests waiting); retry shortly",
                            {"Retry-After": "1"})
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except asyncio.TimeoutError:
            raise HTTPError(503, f"the server is busy (waited {self.wait_s:g} s); retry shortly",
                            {"Retry-After": "1"}) from None
        finally:
            self._waiting -= 1
