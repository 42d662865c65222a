"""The decode sandbox: child processes that decode untrusted bytes, each killed at its
deadline.

A decode that hangs (a hostile file, a codec bug) must not hang the thread that asked,
and a signal-based timer works only in a main thread, while the server decodes in worker
threads. So queries, uploads, thumbnails and files decoded outside the build's workers
go to a small pool of children (``python -c 'vtsearch.decode.child'``, started on first
use, one per concurrent decode up to ``processes``). A child past the deadline is killed
and replaced; the caller gets a ``too slow`` reason. Children inherit no file descriptor
(an index's lock stays with its owner), and exit when their parent does.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import DecodeConfig
from . import frames
from .pillow import Decoded, Skip

CHILD_COMMAND = "from vtsearch.decode.child import main; main()"
STARTUP_TIMEOUT_S = 60.0  # importing Pillow on a loaded machine


def too_slow(seconds: float) -> str:
    return f"too slow: decoding took over {seconds:g} s (a hostile or broken file?)"


class _Child:
    """One decode process and its two pipes."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        try:
            self.process = subprocess.Popen([sys.executable, "-c", CHILD_COMMAND], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, close_fds=True, env=env)
        except OSError as error:
            raise Skip(f"decode error: cannot start a decode process: {error}") from None
        self.requests = self.process.stdin.fileno()
        self.replies = self.process.stdout.fileno()
        os.set_blocking(self.requests, False)
        os.set_blocking(self.replies, False)
        try:
            frames.receive(self.replies, time.monotonic() + STARTUP_TIMEOUT_S)
        except (frames.Overdue, frames.Closed):
            self.kill()
            raise Skip(f"decode error: the decode process did not start ({self.exit_description()})") from None

    def ask(self, header: dict[str, Any], payload: bytes, deadline: float | None) -> tuple[dict, bytearray]:
        frames.send(self.requests, header, payload, deadline)
        return frames.receive(self.replies, deadline)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def exit_description(self) -> str:
        code = self.process.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


class DecodeSandbox:
    """Decode untrusted bytes in at most ``processes`` children, each call bounded by its
    config's ``timeout_s`` (0: no bound). Thread-safe."""

    def __init__(self, processes: int | None = None):
        self.processes = max(1, processes or min(4, os.cpu_count() or 1))
        self._idle: list[_Child] = []
        self._running = 0
        self._available = threading.Condition()
        self._closed = False

    def decode(self, data: bytes, config: DecodeConfig) -> Decoded:
        """Decode ``data`` in a child, or raise :class:`Skip` with the reason."""
        child = self._acquire()
        deadline = time.monotonic() + config.timeout_s if config.timeout_s > 0 else None
        try:
            header, payload = child.ask({"config": config.to_dict()}, data, deadline)
        except frames.Overdue:
            self._discard(child)
            raise Skip(too_slow(config.timeout_s)) from None
        except frames.Closed:
            self._discard(child)
            raise Skip(f"decode error: the decode process died ({child.exit_description()})") from None
        except BaseException:
            self._discard(child)
            raise
        self._release(child)
        if not header["ok"]:
            raise Skip(header["reason"])
        image = Image.frombytes("RGB", tuple(header["size"]), payload)
        return Decoded(image, header["width"], header["height"], header["format"], header["noise"])

    def close(self) -> None:
        """Stop the idle children; busy ones stop when their decode ends."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._running -= len(idle)
            self._available.notify_all()
        for child in idle:
            child.kill()

    def _acquire(self) -> _Child:
        with self._available:
            while True:
                if self._closed:
                    raise Skip("decode error: the decode sandbox is closed")
                if self._idle:
                    return self._idle.pop()
                if self._running < self.processes:
                    self._running += 1
                    break
                self._available.wait()
        try:
            return _Child()
        except BaseException:
            with self._available:
                self._running -= 1
                self._available.notify()
            raise

    def _release(self, child: _Child) -> None:
        with self._available:
            if not self._closed:
                self._idle.append(child)
                self._available.notify()
                return
            self._running -= 1
        child.kill()

    def _discard(self, child: _Child) -> None:
        child.kill()
        with self._available:
            self._running -= 1
            self._available.notify()


_shared: DecodeSandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> DecodeSandbox:
    """This process's sandbox, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodeSandbox()
            atexit.register(_shared.close)
        return _shared


def _forget_after_fork() -> None:
    """A forked process must not talk to its parent's children: it starts its own."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)

__all__ = ["DecodeSandbox", "shared_sandbox", "too_slow"]
