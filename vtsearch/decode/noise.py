"""Decoder noise: what codecs say while they decode, kept off the user's terminal.

Pillow warns through Python's ``warnings`` (``Corrupt EXIF data``, ``Truncated File
Read``); libtiff and friends write straight to the C-level stderr. A decode process calls
:func:`capture_stderr` once, which points its file descriptor 2 at a private temporary
file; :func:`noise_collected` then gathers both kinds per decode. The caller puts the text
into a failed file's reason, or logs it quietly (``vtsearch.decode`` at DEBUG).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from typing import IO, Iterator

logger = logging.getLogger("vtsearch.decode")

MAX_NOISE_CHARS = 400
_captured: IO[bytes] | None = None  # the file behind fd 2, in a decode process only


def capture_stderr() -> None:
    """In a decode process (never the caller's): C-level stderr goes to a private file,
    read and emptied by each decode."""
    global _captured
    if _captured is not None:
        return
    sys.stderr.flush()
    _captured = tempfile.TemporaryFile()
    os.dup2(_captured.fileno(), 2)


def _drain_stderr() -> str:
    if _captured is None:
        return ""
    try:
        sys.stderr.flush()
        size = os.fstat(2).st_size
        text = os.pread(2, min(size, 64 * 1024), 0) if size else b""
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
    except OSError:
        return ""
    return text.decode("utf-8", "replace")


class Noise:
    """What the decoders said during one decode (set when the block ends)."""

    text: str = ""


@contextmanager
def noise_collected() -> Iterator[Noise]:
    """Collect Python warnings and (in a decode process) C-level stderr for one decode."""
    noise = Noise()
    _drain_stderr()  # whatever came before is not this file's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield noise
        finally:
            lines = [f"{item.category.__name__}: {item.message}" for item in caught]
            lines += _drain_stderr().splitlines()
            noise.text = summarize(lines)


def summarize(lines: list[str]) -> str:
    """Distinct non-empty lines, in order, joined and cut to a readable length."""
    distinct = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    text = "; ".join(distinct)
    return text if len(text) <= MAX_NOISE_CHARS else text[: MAX_NOISE_CHARS - 1] + "…"


def with_noise(reason: str, noise: str) -> str:
    """A failed file's reason, with what its decoder said."""
    return f"{reason} [decoder said: {noise}]" if noise else reason


def log_noise(name: str, noise: str) -> None:
    """A decoded file's noise: kept, but only for whoever asks for DEBUG logs."""
    if noise:
        logger.debug("%s decoded; the decoder said: %s", name, noise)


__all__ = ["capture_stderr", "noise_collected", "Noise", "summarize", "with_noise", "log_noise"]
