"""Stage 1: the top ``k`` catalog ids for a query vector, within a filter's ids."""

from __future__ import annotations

import math

import faiss
import numpy as np

from ..filters import SearchFilter
from ..store.ann import AnnIndex, Hits
from ..store.catalog import Catalog

EXACT_CHUNK = 5_000  # allowed vectors scored per matrix product


def recall(vector: np.ndarray, k: int, ann: AnnIndex, catalog: Catalog, filters: SearchFilter | None,
           exact_filter_limit: int) -> Hits:
    """FAISS's top ``k`` for one unit ``vector``; with an active filter, its top ``k``
    among the images the filter allows."""
    if filters is not None and filters.active:
        return filtered_recall(vector, k, ann, catalog, catalog.filtered_ids(filters), exact_filter_limit)
    return ann.search(vector.reshape(1, -1), k)[0]


def filtered_recall(vector: np.ndarray, k: int, ann: AnnIndex, catalog: Catalog, allowed: np.ndarray,
                    exact_filter_limit: int) -> Hits:
    """Top ``k`` among the ``allowed`` ids.

    An exact index searches with an id selector (still exact). An approximate one does
    too when the filter keeps many images, probing more lists the fewer it keeps; when
    it keeps at most ``exact_filter_limit``, their vectors are scored exactly, so
    nothing the filter allows is missed.
    """
    if len(allowed) == 0:
        return []
    if ann.config.exact or len(allowed) > exact_filter_limit:
        fraction = len(allowed) / max(len(ann), 1)
        nprobe = None if ann.config.exact else math.ceil(max(ann.config.nprobe, 1) / min(1.0, fraction))
        return ann.search(vector.reshape(1, -1), k, selector=faiss.IDSelectorBatch(allowed), nprobe=nprobe)[0]
    best: Hits = []
    for start in range(0, len(allowed), EXACT_CHUNK):
        ids = allowed[start:start + EXACT_CHUNK].tolist()
        scores = catalog.vectors(ids, len(vector)) @ vector
        top = np.argsort(-scores, kind="stable")[:k]
        best = sorted(best + [(ids[i], float(scores[i])) for i in top], key=lambda hit: -hit[1])[:k]
    return best
