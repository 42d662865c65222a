"""A build run from start to end, around whichever engine encodes.

    take the writer lock ─▶ catch up with other writers ─▶ sweep a killed run's left-overs
    ─▶ engine: scan ▸ plan ▸ decode ▸ encode ▸ commit (catalog first, then FAISS)
    ─▶ retrain or rebuild FAISS for the new size ─▶ save ─▶ compact the region store

Engines (:class:`vtsearch.build.local.LocalEngine`, the Ray engine of
:mod:`vtsearch.build.distributed`) only differ in where decoding and encoding run.
"""

from __future__ import annotations

import os
from typing import Iterable, Protocol, Sequence

from ..config import IngestOptions
from ..progress import Progress
from ..records import IngestSummary, RemoveSummary
from ..store import Store
from ..store.ann import AnnIndex
from ..store.catalog import Catalog
from ..store.regions import RegionStore


class Engine(Protocol):
    def ingest(self, paths: Sequence[str], catalog: Catalog, ann: AnnIndex, options: IngestOptions,
               progress: Progress | None, region_store: RegionStore | None) -> IngestSummary: ...


def add(store: Store, engine: Engine, paths: Iterable[str | bytes | os.PathLike], options: IngestOptions,
        progress: Progress | None = None) -> IngestSummary:
    """Index the image files under ``paths`` into ``store``."""
    with store.writing():
        store.manifest_file.reload()  # another process may have written it (a trained reranker)
        store.sync_locked()
        store.sweep_leftovers()  # a killed writer's, never ours: we hold the lock
        target = store.ann.write_target()
        summary = engine.ingest([os.fsdecode(p) for p in paths], store.catalog, target, options, progress,
                                store.regions.store)
        store.ann.settle()
        store.regions.compact_if_sparse(store.ann)
    return summary


def remove(store: Store, paths: Iterable[str | bytes | os.PathLike]) -> RemoveSummary:
    """Remove files, or everything under folders, whether or not they still exist."""
    with store.writing():
        store.sync_locked()
        found: dict[str, int] = {}
        not_indexed: list[str] = []
        for given in paths:
            root = os.path.abspath(os.path.expanduser(os.fsdecode(given)))  # bytes or str
            entries = store.catalog.under(root)
            if not entries:
                not_indexed.append(root)
            found.update({path: entry.id for path, entry in entries.items()})
        if found:
            store.ann.remove(store.catalog.remove(list(found.values())))
            store.regions.compact_if_sparse(store.ann)
    return RemoveSummary(removed=sorted(found), not_indexed=not_indexed)
