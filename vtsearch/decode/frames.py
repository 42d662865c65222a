"""Messages between a process and a decode child over pipes: a JSON header and a payload.

The parent's side waits with a deadline (``poll``, so any file descriptor number works);
the child's side blocks.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_LENGTHS = struct.Struct(">IQ")  # header bytes, payload bytes
_CHUNK = 1 << 20


class Overdue(Exception):
    """The deadline passed before the message was through."""


class Closed(Exception):
    """The other end is gone (the child died, or the parent closed its pipe)."""


def send(fd: int, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"",
         deadline: float | None = None) -> None:
    encoded = json.dumps(header).encode()
    _write_all(fd, _LENGTHS.pack(len(encoded), len(payload)) + encoded, deadline)
    _write_all(fd, payload, deadline)


def receive(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytearray]:
    header_size, payload_size = _LENGTHS.unpack(_read_exactly(fd, _LENGTHS.size, deadline))
    header = json.loads(bytes(_read_exactly(fd, header_size, deadline)))
    return header, _read_exactly(fd, payload_size, deadline)


def _wait(fd: int, events: int, deadline: float | None) -> None:
    """Until ``fd`` is ready (or its other end gone); :class:`Overdue` past ``deadline``."""
    poller = select.poll()
    poller.register(fd, events)
    if deadline is None:
        poller.poll()
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000 + 0.5))):
        raise Overdue()


def _write_all(fd: int, data: bytes | bytearray | memoryview, deadline: float | None) -> None:
    view = memoryview(data).cast("B")
    while view:
        _wait(fd, select.POLLOUT, deadline)
        try:
            written = os.write(fd, view[:_CHUNK])
        except BlockingIOError:
            continue
        except OSError as error:  # EPIPE and friends: nobody reads any more
            raise Closed(str(error)) from None
        view = view[written:]


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        _wait(fd, select.POLLIN, deadline)
        try:
            count = os.readv(fd, [view[got:]])
        except BlockingIOError:
            continue
        except OSError as error:
            raise Closed(str(error)) from None
        if count == 0:
            raise Closed("end of stream")
        got += count
    return buffer


__all__ = ["send", "receive", "Overdue", "Closed"]
