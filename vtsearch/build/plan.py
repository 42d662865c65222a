"""The plan of a build run: what the scan found, compared with the catalog.

Unchanged files (same size and mtime, or same content hash after a touch) are never
decoded or encoded again. Indexed content that appears at a new path while its old path
vanished is a move: the row takes the new path and keeps its id, vectors and regions.
Catalog rows under the scanned paths whose files are gone are removed (kept with
``keep_missing``), except inside folders the scan could not list.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..config import IngestOptions
from ..decode import hash_file
from ..records import ErrorRecord, IngestSummary, ScannedFile, ScanReport
from ..store.ann import AnnIndex
from ..store.catalog import INDEXED, Catalog, CatalogEntry
from .scan import scan


def plan(
    candidates: Sequence[ScannedFile], known: dict[str, CatalogEntry]
) -> tuple[list[ScannedFile], list[tuple[int, int, int]]]:
    """Split candidates into files to decode and unchanged files whose stat moved.

    Returns (to_decode, touched) where touched holds (id, size, mtime_ns) of indexed
    files whose size/mtime changed but whose content hash did not.
    """
    to_decode: list[ScannedFile] = []
    touched: list[tuple[int, int, int]] = []
    for candidate in candidates:
        entry = known.get(candidate.path)
        if entry is None or entry.status != INDEXED:
            to_decode.append(candidate)  # new, or failed before (options may differ now)
            continue
        if entry.size == candidate.size and entry.mtime_ns == candidate.mtime_ns:
            continue
        if entry.size == candidate.size and entry.content_hash:
            try:
                if hash_file(candidate.path) == entry.content_hash:
                    touched.append((entry.id, candidate.size, candidate.mtime_ns))
                    continue
            except OSError:
                pass  # decoding will record why it cannot be read
        to_decode.append(candidate)
    return to_decode, touched


def vanished(report: ScanReport, catalog: Catalog) -> dict[str, CatalogEntry]:
    """Catalog entries under the scanned roots that the scan did not find on disk."""
    seen = {candidate.path for candidate in report.candidates}
    gone: dict[str, CatalogEntry] = {}
    for root in report.roots:
        for path, entry in catalog.under(root).items():
            if path not in seen and report.covers(path):
                gone[path] = entry
    return gone


def find_moves(
    to_decode: list[ScannedFile], gone: dict[str, CatalogEntry], known: dict[str, CatalogEntry]
) -> tuple[list[tuple[int, str, int, int]], list[ScannedFile]]:
    """Match new files to vanished indexed rows by content; returns (moves, still to decode).

    Only new files whose size equals a vanished row's are hashed, so a run without
    vanished files reads nothing extra. Each vanished row is matched at most once.
    """
    by_hash: dict[str, list[tuple[str, CatalogEntry]]] = {}
    for path, entry in gone.items():
        if entry.status == INDEXED and entry.content_hash:
            by_hash.setdefault(entry.content_hash, []).append((path, entry))
    sizes = {entry.size for entries in by_hash.values() for _path, entry in entries}
    moves: list[tuple[int, str, int, int]] = []
    remaining: list[ScannedFile] = []
    for candidate in to_decode:
        matches = None
        if candidate.path not in known and candidate.size in sizes:
            try:
                matches = by_hash.get(hash_file(candidate.path))
            except OSError:
                matches = None  # decoding will record why it cannot be read
        if matches:
            old_path, entry = matches.pop()
            del gone[old_path]
            moves.append((entry.id, candidate.path, candidate.size, candidate.mtime_ns))
        else:
            remaining.append(candidate)
    return moves, remaining


def prepare(
    paths: Iterable[str],
    catalog: Catalog,
    ann: AnnIndex,
    options: IngestOptions,
) -> tuple[list[ScannedFile], dict[str, CatalogEntry], IngestSummary]:
    """Scan ``paths`` and bring the catalog up to date with everything that needs no
    encoding (touched, moved and vanished files). Returns (the files to decode and
    encode, in order; the catalog entries of the scanned paths; the summary so far)."""
    report = scan(paths)
    summary = IngestSummary(not_images=report.not_images, missing=list(report.missing))
    summary.skipped.extend(ErrorRecord(path, f"unreadable: {why}") for path, why in report.unreadable)

    known = catalog.entries([candidate.path for candidate in report.candidates])
    to_decode, touched = plan(report.candidates, known)
    catalog.touch(touched)
    summary.unchanged = len(report.candidates) - len(to_decode)
    gone = vanished(report, catalog)
    moves, to_decode = find_moves(to_decode, gone, known)
    catalog.move(moves)
    summary.moved = len(moves)
    if options.keep_missing:
        summary.kept_missing = len(gone)
    elif gone:
        ann.remove(catalog.remove([entry.id for entry in gone.values()]))
        summary.removed = len(gone)
    return to_decode, known, summary
