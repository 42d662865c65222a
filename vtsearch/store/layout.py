"""The index folder's file names, and how a reader tells that a file was replaced.

Layout::

    DIR/manifest.json     encoder spec, ANN config, versions, times
    DIR/catalog.sqlite    the source of truth (images, errors, embeddings, texts); or a
                          database on a PostgreSQL server, whose URL the manifest records
    DIR/ann.faiss         FAISS index of the embeddings (derived, rebuildable)
    DIR/ann-*.ivfdata     its inverted lists, when built on disk (vtsearch rebuild --on-disk)
    DIR/regions.f16       region features, fp16, memory-mapped (absent: --no-regions)
    DIR/reranker.pt       trained fusion scorer (absent: untrained, stage-1 order)
    DIR/read-*.f32        each image as that scorer reads it, row for row beside the
                          region store (derived; vtsearch.query.readcache)
    DIR/.writer.lock      the writer lock
"""

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
