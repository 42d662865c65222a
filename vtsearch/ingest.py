"""The build path: scan → plan → decode → encode → store (region store + catalog) → ann.

The plan compares the scan with the catalog. Unchanged files (same size and mtime, or
same content hash after a touch) are never decoded or encoded again. Indexed content
that appears at a new path while its old path vanished is a move: the row takes the new
path and keeps its id, vectors and regions. Catalog rows under the scanned paths whose
files are gone are removed (kept with ``keep_missing``), except inside folders the scan
could not list. Each decoded batch is encoded, its regions appended durably
to the region store, and the batch committed to the catalog in one transaction before
the FAISS index is updated: the catalog always leads, and the FAISS index can be
rebuilt from it after a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch

from .ann import AnnIndex
from .catalog import INDEXED, Catalog, CatalogEntry
from .config import IngestOptions
from .decode import decode_batches, hash_file
from .encode import Encoder
from .records import DecodedImage, DecodeFailure, ErrorRecord, IngestSummary, ScannedFile, ScanReport
from .regions import RegionStore
from .scan import scan


class Progress(Protocol):
    """Receives progress of a long run; the CLI shows a bar, the library stays silent."""

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


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


def ingest(
    paths: Iterable[str],
    catalog: Catalog,
    ann: AnnIndex,
    encoder: Encoder,
    options: IngestOptions,
    progress: Progress | None = None,
    region_store: RegionStore | None = None,
) -> IngestSummary:
    """Index the images under ``paths`` into ``catalog``, ``ann`` and ``region_store``."""
    started = time.perf_counter()
    progress = progress or NoProgress()
    to_decode, known, summary = prepare(paths, catalog, ann, options)
    decode_config = encoder.decode_config(max_pixels=options.max_pixels,
                                          allow_truncated=options.allow_truncated)
    grid = region_store.layout.grid if region_store is not None else None
    progress.start(len(to_decode))
    try:
        for batch in decode_batches(
            to_decode, decode_config, encoder.preprocess, options.batch_size, options.workers
        ):
            encoded = encode_batch(batch, encoder, grid)
            commit_batch(encoded, catalog, ann, region_store, known, summary)
            progress.advance(len(batch))
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class EncodedBatch:
    """One batch's outcome: the decoded images with their vectors (and regions), and the
    files that failed. What the commit needs; pixels are no longer used."""

    decoded: list[DecodedImage]
    failures: list[DecodeFailure]
    embeddings: np.ndarray  # (len(decoded), dim) float32
    regions: np.ndarray | None  # (len(decoded), R, D), or None when none are stored


def encode_batch(batch: Sequence[DecodedImage | DecodeFailure], encoder: Encoder,
                 grid: int | None) -> EncodedBatch:
    """Encode a decoded batch; ``grid``: pool regions to it (None: keep no regions)."""
    decoded = [outcome for outcome in batch if isinstance(outcome, DecodedImage)]
    failures = [outcome for outcome in batch if isinstance(outcome, DecodeFailure)]
    embeddings = np.empty((0, encoder.embed_dim), dtype=np.float32)
    regions = None
    if decoded:
        features = encoder.encode_image_features(torch.stack([image.pixels for image in decoded]), grid)
        embeddings = features.vectors
        if grid is not None and features.regions is not None:
            regions = features.regions.detach().cpu().numpy()
    return EncodedBatch(decoded, failures, embeddings, regions)


def commit_batch(
    batch: EncodedBatch,
    catalog: Catalog,
    ann: AnnIndex,
    region_store: RegionStore | None,
    known: dict[str, CatalogEntry],
    summary: IngestSummary,
) -> None:
    """Append the batch's regions durably, commit it to the catalog in one transaction,
    then update the FAISS index: the catalog always leads."""
    region_rows = None
    if region_store is not None and batch.decoded:
        region_rows = region_store.append(batch.regions)  # durable before the commit
    ids, failed_ids = catalog.store(batch.decoded, batch.embeddings, batch.failures, known, region_rows)

    replaced = [known[image.source.path].id for image in batch.decoded
                if image.source.path in known and known[image.source.path].status == INDEXED]
    ann.remove([*replaced, *failed_ids])
    ann.add(np.asarray(ids, dtype=np.int64), batch.embeddings)

    summary.indexed += len(batch.decoded)
    summary.updated += len(replaced)
    summary.skipped.extend(ErrorRecord(f.source.path, f.reason) for f in batch.failures)
