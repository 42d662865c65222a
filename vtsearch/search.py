"""The query path: a query vector → ann.search → catalog rows → ranked results."""

from __future__ import annotations

import numpy as np

from .ann import AnnIndex
from .catalog import Catalog
from .errors import QueryError
from .records import SearchResult

MAX_K = 10_000


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool):
        raise QueryError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
    if k > MAX_K:
        raise QueryError(f"k must be at most {MAX_K}, got {k}")
    return k


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query text is empty")
    return text.strip()


def search_vector(query: np.ndarray, k: int, ann: AnnIndex, catalog: Catalog) -> list[SearchResult]:
    """Top-``k`` images for one unit query vector (D,)."""
    hits = ann.search(query.reshape(1, -1), check_k(k))[0]
    rows = catalog.rows([image_id for image_id, _ in hits])
    # an id the catalog no longer has (removed while this snapshot was loaded) is dropped
    present = [(image_id, score) for image_id, score in hits if image_id in rows]
    return [
        SearchResult(rank=rank, id=image_id, path=rows[image_id].path, score=score)
        for rank, (image_id, score) in enumerate(present, start=1)
    ]
