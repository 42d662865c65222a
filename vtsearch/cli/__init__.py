"""The ``vtsearch`` command line: a thin shell over :class:`vtsearch.Index`.

Each command parses its options, calls one library function, and prints the result:
a table for people, ``--json`` for programs. Library errors become one line on stderr
(with advice on which flag helps, :mod:`.hints`) and a non-zero exit code.

``app`` holds the click group and the shared options; the command modules register
their commands on it when imported below. None of them imports torch, open_clip or FAISS
at module level, so ``vtsearch --help`` stays fast.
"""

from __future__ import annotations

from . import build_commands, query_commands, serve_command, train_commands  # noqa: F401  (registers commands)
from .app import main

__all__ = ["main"]
