"""The decode child: a process started by :class:`~vtsearch.decode.sandbox.DecodeSandbox`.

It reads requests (a decode config and a file's bytes) on stdin and answers on the
stdout it was started with (the upright RGB pixels, or the reason the bytes cannot be
used). Its own stdout and stderr point at a private file, so nothing a codec prints
reaches a terminal or the replies. It ignores Ctrl-C (its parent decides), and exits when
its parent closes the pipe or dies.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from ..config import DecodeConfig
from . import frames
from .formats import enable_optional_plugins
from .noise import capture_stderr
from .pillow import Skip, decode_here

PARENT_CHECK_S = 0.5


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.dup(1)
    capture_stderr()
    os.dup2(2, 1)  # stray prints go where codec noise goes, never into the replies
    watch_parent(os.getppid())
    enable_optional_plugins()
    frames.send(replies, {"ready": True})
    while True:
        try:
            header, payload = frames.receive(0)
        except frames.Closed:
            return
        frames.send(replies, *answer(header, payload))


def answer(header: dict, data: bytes | bytearray) -> tuple[dict, bytes]:
    config = DecodeConfig.from_dict(header["config"])
    try:
        decoded = decode_here(data, config)
    except Skip as skip:
        return {"ok": False, "reason": str(skip)}, b""
    image = decoded.image
    return {"ok": True, "size": list(image.size), "width": decoded.width, "height": decoded.height,
            "format": decoded.format, "noise": decoded.noise}, image.tobytes()


def watch_parent(parent: int) -> None:
    """Exit as soon as the parent is gone, even in the middle of a decode."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="vtsearch-decode-parent-watch", daemon=True).start()


__all__ = ["main", "answer", "watch_parent"]
