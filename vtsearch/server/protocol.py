"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's head.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but the first
byte a client sends cancels that timer, and nothing bounds a connection that sends its
request line and headers a byte at a time, or sends nothing at all: 300 such clients
held 300 connections open for as long as they liked. Here each request's head must be
complete within :data:`HEAD_TIMEOUT_S` of the connection opening or the previous
response ending; the body has its own deadline (:class:`~.limits.BodyLimit`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0


class HeadTimeoutH11Protocol(H11Protocol):
    head_timeout_s = HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # for the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_overdue, self.cycle)

    def _head_overdue(self, cycle: Any) -> None:
        """Close the connection unless a request head has arrived since the deadline was set
        (a new cycle), or the one being answered is still running."""
        self._head_deadline = None
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.close()


__all__ = ["HEAD_TIMEOUT_S", "HeadTimeoutH11Protocol"]
