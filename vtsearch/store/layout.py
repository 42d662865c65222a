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
                          region store: read-<region file>-<scorer digest>-<format>.f32
                          (derived; vtsearch.query.readcache)
    DIR/.writer.lock      the writer lock
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import RegionLayout

MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
ANN = "ann.faiss"
RERANKER_FILE = "reranker.pt"
READ_PREFIX, READ_SUFFIX = "read-", ".f32"  # each image as the trained scorer reads it (vtsearch.query.readcache)
READ_FORMAT = 1  # of what a read-image row holds; a change makes every earlier file stale


def bytes_digest(data: bytes) -> str:
    """A short content hash of a scorer's checkpoint (what its read-image file is keyed by)."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_layout(regions: RegionLayout, width: int) -> RegionLayout:
    """How a read-image file keeps a row: the region store's tokens at the scorer's width, float32."""
    return RegionLayout(grid=regions.grid, dim=width, prefix=regions.prefix, dtype="float32")


def read_file_name(region_file: str, digest: str) -> str:
    """The read-image file of a region file and a scorer (by its checkpoint's digest)."""
    return f"{READ_PREFIX}{region_file}-{digest}-{READ_FORMAT}{READ_SUFFIX}"

FileIdentity = tuple[int, int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """(inode, size, mtime) of a file, or None: an atomic replace changes the inode."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
