"""The index folder's file names, and how a reader tells that a file was replaced."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
ANN = "ann.faiss"
RERANKER_FILE = "reranker.pt"

FileIdentity = tuple[int, int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """(inode, size, mtime) of a file, or None: an atomic replace changes the inode."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
