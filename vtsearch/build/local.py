"""The local engine of the build path: decode → encode → store (region store + catalog)
→ ann, batch by batch, in this process (after :func:`vtsearch.build.plan.prepare`).

The whole path: scan → plan → decode → encode → store → ann.

Each decoded batch is encoded, its regions appended durably
to the region store, and the batch committed to the catalog in one transaction before
the FAISS index is updated: the catalog always leads, and the FAISS index can be
rebuilt from it after a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..config import IngestOptions, RegionLayout
from ..decode import decode_batches
from ..encoder import Encoder
from ..progress import NoProgress, Progress
from ..records import DecodedImage, DecodeFailure, ErrorRecord, IngestSummary
from ..store.ann import AnnIndex
from ..store.catalog import INDEXED, Catalog, CatalogEntry
from ..store.regions import RegionStore
from .plan import prepare


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
    layout = region_store.layout if region_store is not None else None
    progress.start(len(to_decode))
    try:
        for batch in decode_batches(
            to_decode, decode_config, encoder.preprocess, options.batch_size, options.workers
        ):
            encoded = encode_batch(batch, encoder, layout)
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
                 layout: RegionLayout | None) -> EncodedBatch:
    """Encode a decoded batch, with regions as ``layout`` keeps them (None: no regions)."""
    decoded = [outcome for outcome in batch if isinstance(outcome, DecodedImage)]
    failures = [outcome for outcome in batch if isinstance(outcome, DecodeFailure)]
    embeddings = np.empty((0, encoder.embed_dim), dtype=np.float32)
    regions = None
    if decoded:
        features = encoder.encode_image_features(torch.stack([image.pixels for image in decoded]), layout)
        embeddings = features.vectors
        if layout is not None and features.regions is not None:
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


class LocalEngine:
    """Encodes in this process, with the index's encoder (loaded on first use)."""

    def __init__(self, load_encoder: Callable[[], Encoder]):
        self.load_encoder = load_encoder

    def ingest(self, paths: Sequence[str], catalog: Catalog, ann: AnnIndex, options: IngestOptions,
               progress: Progress | None, region_store: RegionStore | None) -> IngestSummary:
        return ingest(paths, catalog, ann, self.load_encoder(), options, progress, region_store)
