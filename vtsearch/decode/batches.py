"""Decode many files in order, in worker processes, each file bounded by a deadline.

``workers`` processes (forked where the platform allows, as a torch ``DataLoader``'s are)
read, decode and preprocess files ahead of the consumer, so decoding overlaps encoding.
A collector thread reads their results as they arrive. A worker still on one file at the
deadline (``DecodeConfig.timeout_s``), or one that dies on a file (a codec crash), is
killed; the file is recorded with its reason, the worker's other queued files go back to
the queue, and a new worker takes its place: no file can stop or hang a run.

A forked worker closes every file descriptor it inherited but its two pipes (an index's
lock never outlives its owner in a worker), ignores Ctrl-C (its parent decides), sends
C-level stderr to a private file (codec noise travels back with each result and is
logged quietly, or becomes part of a failed file's reason), and exits when its parent
dies, even in the middle of a file.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Iterator, Sequence

import numpy as np
import torch

from ..config import DecodeConfig
from ..records import DecodeFailure, DecodeOutcome, ScannedFile
from .child import watch_parent
from .files import Transform, decode_file, decode_source
from .formats import enable_optional_plugins
from .noise import capture_stderr, log_noise
from .pillow import decode_here
from .sandbox import too_slow

DEPTH = 4  # files queued per worker: one decoding, the rest ready to start
POLL_S = 0.1  # how often the collector looks at deadlines and new workers


def decode_batches(
    files: Sequence[ScannedFile],
    config: DecodeConfig,
    transform: Transform,
    batch_size: int,
    workers: int,
) -> Iterator[list[DecodeOutcome]]:
    """Decode ``files`` in order, in batches, in ``workers`` processes (0: in this
    process, with each file's Pillow decode in the sandbox)."""
    if not files:
        return iter(())
    if workers <= 0:
        return _in_process(files, config, transform, batch_size)
    return _pooled(list(files), config, transform, batch_size, workers)


def _in_process(files: Sequence[ScannedFile], config: DecodeConfig, transform: Transform,
                batch_size: int) -> Iterator[list[DecodeOutcome]]:
    for start in range(0, len(files), batch_size):
        yield [decode_file(source, config, transform) for source in files[start:start + batch_size]]


def _pooled(files: list[ScannedFile], config: DecodeConfig, transform: Transform, batch_size: int,
            workers: int) -> Iterator[list[DecodeOutcome]]:
    pool = _Pool(files, config, transform, workers, window=2 * batch_size * workers)
    try:
        for start in range(0, len(files), batch_size):
            yield pool.take(start, min(start + batch_size, len(files)))
    finally:
        pool.close()


def _work(files: list[ScannedFile], config: DecodeConfig, transform: Transform, tasks: Connection,
          results: Connection, parent: int, forked: bool) -> None:
    """A worker's life: decode the files it is sent, by index, until told to stop."""
    if forked:
        _close_inherited(keep={tasks.fileno(), results.fileno()})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    capture_stderr()
    watch_parent(parent)
    enable_optional_plugins()
    if "torch" in sys.modules:  # one thread per worker, as a DataLoader's workers
        sys.modules["torch"].set_num_threads(1)
    while True:
        try:
            index = tasks.recv()
        except (EOFError, OSError):
            break
        if index is None:
            break
        outcome, noise = decode_source(files[index], config, transform, decode_here)
        _send(results, index, outcome, noise)
    os._exit(0)


def _send(results: Connection, index: int, outcome: DecodeOutcome, noise: str) -> None:
    """A result for the parent: the record, then a decoded image's pixels as raw bytes
    (pickling a tensor would copy it twice more)."""
    pixels = getattr(outcome, "pixels", None)
    if not isinstance(pixels, torch.Tensor) or pixels.dtype == torch.bfloat16:  # a failure, or no numpy twin
        results.send_bytes(pickle.dumps((index, outcome, noise, None), protocol=pickle.HIGHEST_PROTOCOL))
        return
    array = pixels.numpy()
    layout = (array.shape, array.dtype.str)
    header = (index, replace(outcome, pixels=None), noise, layout)
    results.send_bytes(pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL))
    results.send_bytes(memoryview(np.ascontiguousarray(array)).cast("B"))


def _close_inherited(keep: set[int]) -> None:
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        descriptors = list(range(3, 1024))
    for descriptor in descriptors:
        if descriptor > 2 and descriptor not in keep:
            try:
                os.close(descriptor)
            except OSError:
                pass


class _Worker:
    """One worker process, its pipes, and the files sent to it, in order."""

    def __init__(self, context, files: list[ScannedFile], config: DecodeConfig, transform: Transform):
        task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, result_writer = context.Pipe(duplex=False)
        forked = context.get_start_method() == "fork"
        self.process = context.Process(
            target=_work, name="vtsearch-decode", daemon=True,
            args=(files, config, transform, task_reader, result_writer, os.getpid(), forked))
        self.process.start()
        task_reader.close()
        result_writer.close()
        self.assigned: deque[int] = deque()
        self.started_at: float | None = None  # when its current file began
        self.alive = True

    def overdue(self, now: float, timeout_s: float) -> bool:
        return timeout_s > 0 and self.started_at is not None and now - self.started_at > timeout_s

    def stop(self, kill: bool) -> None:
        """End the process: at once, or (``kill`` False) after a second's grace."""
        grace = time.monotonic() + (0.0 if kill else 1.0)
        while self.process.is_alive() and time.monotonic() < grace:
            time.sleep(0.01)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()  # no timeout: a forked worker closed the pipe join's timeout watches
        self.tasks.close()
        self.results.close()

    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


class _Pool:
    """Workers, the files still to send, and the results not yet taken."""

    def __init__(self, files: list[ScannedFile], config: DecodeConfig, transform: Transform,
                 workers: int, window: int):
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._context = multiprocessing.get_context(method)
        self._files, self._config, self._transform = files, config, transform
        self._wanted, self._window = workers, window
        self._state = threading.Condition()
        self._pending = list(range(len(files)))  # a heap: the lowest index goes first
        self._limit = window  # files below this index may be sent
        self._results: dict[int, DecodeOutcome] = {}
        self._workers: list[_Worker] = []
        self._failure: BaseException | None = None
        self._closing = False
        with self._state:
            self._spawn_missing()
            self._assign()
        self._collector = threading.Thread(target=self._collect_forever, name="vtsearch-decode-results",
                                           daemon=True)
        self._collector.start()

    def take(self, start: int, stop: int) -> list[DecodeOutcome]:
        """The outcomes of files ``start`` to ``stop``, waiting for them. New workers are
        started here, in the consumer's thread, never while it is busy elsewhere."""
        with self._state:
            self._limit = max(self._limit, start + self._window)
            while not all(index in self._results for index in range(start, stop)):
                if self._failure is not None:
                    raise RuntimeError("the decode workers stopped") from self._failure
                self._spawn_missing()
                self._assign()
                self._state.wait(POLL_S)
            batch = [self._results.pop(index) for index in range(start, stop)]
            self._limit = stop + self._window
            self._assign()
        return batch

    def close(self) -> None:
        """Stop the collector, then the workers: idle ones are told to, busy ones killed."""
        with self._state:
            self._closing = True
            workers, self._workers = [worker for worker in self._workers if worker.alive], []
        self._collector.join(timeout=5.0)
        for worker in workers:
            try:
                worker.tasks.send(None)
            except OSError:
                pass
        for worker in workers:
            worker.stop(kill=bool(worker.assigned))

    def _spawn_missing(self) -> None:
        self._workers = [worker for worker in self._workers if worker.alive]
        while len(self._workers) < self._wanted:
            self._workers.append(_Worker(self._context, self._files, self._config, self._transform))

    def _assign(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            while (worker.alive and len(worker.assigned) < DEPTH and self._pending
                   and self._pending[0] < self._limit):
                index = heapq.heappop(self._pending)
                try:
                    worker.tasks.send(index)
                except OSError:  # it died: the collector will see to it
                    heapq.heappush(self._pending, index)
                    break
                if not worker.assigned:
                    worker.started_at = now
                worker.assigned.append(index)

    def _collect_forever(self) -> None:
        try:
            while self._collect_once():
                pass
        except BaseException as error:
            with self._state:
                self._failure = error
                self._state.notify_all()

    def _collect_once(self) -> bool:
        with self._state:
            if self._closing:
                return False
            workers = [worker for worker in self._workers if worker.alive]
        # A worker's death shows as the end of its results pipe (a forked worker closed
        # the pipe behind ``process.sentinel`` with the rest of what it inherited).
        waitables = [worker.results for worker in workers]
        ready = set(wait(waitables, timeout=POLL_S)) if waitables else set()
        if not waitables:
            time.sleep(POLL_S)
        received = {worker: _receive(worker) for worker in workers if worker.results in ready}
        with self._state:
            now = time.monotonic()
            for worker in workers:
                if worker in received and received[worker] is None:
                    self._lose(worker, None)
                elif worker in received:
                    self._record(worker, received[worker], now)
                elif worker.overdue(now, self._config.timeout_s):
                    self._lose(worker, too_slow(self._config.timeout_s))
            self._assign()
            self._state.notify_all()
        return True

    def _record(self, worker: _Worker, message: tuple[int, DecodeOutcome, str], now: float) -> None:
        index, outcome, noise = message
        worker.assigned.remove(index)
        worker.started_at = now if worker.assigned else None
        self._results[index] = outcome
        log_noise(outcome.source.path, noise)

    def _lose(self, worker: _Worker, reason: str | None) -> None:
        """Stop ``worker``; its current file fails with ``reason`` (None: it died on it),
        its queued files wait for another worker."""
        if not worker.alive:
            return
        worker.alive = False
        worker.stop(kill=True)
        if reason is None:
            reason = f"decode error: the decode process died on this file ({worker.exit_description()})"
        if worker.assigned:
            current = worker.assigned.popleft()
            self._results[current] = DecodeFailure(source=self._files[current], reason=reason)
            for index in worker.assigned:
                heapq.heappush(self._pending, index)
            worker.assigned.clear()


def _receive(worker: _Worker) -> tuple[int, DecodeOutcome, str] | None:
    try:
        index, outcome, noise, layout = pickle.loads(worker.results.recv_bytes())
        if layout is not None:
            shape, dtype = layout
            array = np.frombuffer(bytearray(worker.results.recv_bytes()), dtype=dtype).reshape(shape)
            outcome = replace(outcome, pixels=torch.from_numpy(array))
    except (EOFError, OSError):
        return None
    return index, outcome, noise


__all__ = ["decode_batches"]
