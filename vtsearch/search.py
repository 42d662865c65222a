"""The query path: query features → ann.search (top recall_k, within the filter's ids) →
rerank → catalog rows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import faiss
import numpy as np
import torch

from .ann import AnnIndex, Hits
from .catalog import Catalog
from .errors import QueryError
from .filters import SearchFilter
from .records import SearchResponse, SearchResult
from .rerank import RegionSource, Reranker

MAX_K = 10_000
MAX_QUERY_CHARS = 10_000  # far past any text tower's context; longer input is cut first
EXACT_FILTER_LIMIT = 20_000  # a filter keeping at most this many images is searched exactly
EXACT_CHUNK = 5_000
DUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for "the same picture"


def check_k(k: int, name: str = "k") -> int:
    if not isinstance(k, int) or isinstance(k, bool):
        raise QueryError(f"{name} must be an integer, got {k!r}")
    if k < 1:
        raise QueryError(f"{name} must be at least 1, got {k}")
    if k > MAX_K:
        raise QueryError(f"{name} must be at most {MAX_K}, got {k}")
    return k


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query text is empty")
    return text.strip()


@dataclass(frozen=True)
class Candidate:
    id: int
    stage1_score: float
    stage1_rank: int
    score: float


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round((now - self._last) * 1000.0, 3)
        self._last = now


def run_query(
    vector: np.ndarray,
    k: int,
    ann: AnnIndex,
    catalog: Catalog,
    *,
    recall_k: int = 100,
    text_tokens: torch.Tensor | None = None,
    reranker: Reranker | None = None,
    region_source: RegionSource | None = None,
    encode_ms: float = 0.0,
    conditions: SearchFilter | None = None,
) -> SearchResponse:
    """Recall ``max(k, recall_k)`` candidates, rerank them when a scorer is given, keep ``k``.

    Without a scorer (or without text tokens: query by example) only ``k`` are recalled.
    """
    check_k(k)
    check_k(recall_k, "recall_k")
    clock = _Clock()
    clock.timings["encode"] = round(encode_ms, 3)
    rerank = reranker is not None and region_source is not None and text_tokens is not None
    wanted = max(k, recall_k) if rerank else k
    if conditions is not None and conditions.active:
        hits = filtered_recall(vector, wanted, ann, catalog, catalog.filtered_ids(conditions))
    else:
        hits = ann.search(vector.reshape(1, -1), wanted)[0]
    clock.lap("ann")
    candidates = [Candidate(image_id, score, rank, score) for rank, (image_id, score) in enumerate(hits, 1)]
    if rerank and candidates:
        ids = [c.id for c in candidates]
        regions = region_source.regions(ids)
        clock.lap("regions")
        output = reranker.rerank(text_tokens, np.array([c.stage1_score for c in candidates]), regions)
        candidates = [
            Candidate(candidates[i].id, candidates[i].stage1_score, candidates[i].stage1_rank, float(output.final[i]))
            for i in output.order
        ]
        clock.lap("rerank")
    return SearchResponse(to_results(candidates[:k], catalog), rerank, clock.timings)


def filtered_recall(vector: np.ndarray, k: int, ann: AnnIndex, catalog: Catalog, allowed: np.ndarray) -> Hits:
    """Top ``k`` among the ``allowed`` ids.

    An exact index searches with an id selector (still exact). An approximate one does
    too when the filter keeps many images, probing more lists the fewer it keeps; when
    it keeps at most :data:`EXACT_FILTER_LIMIT`, their vectors are scored exactly, so
    nothing the filter allows is missed.
    """
    if len(allowed) == 0:
        return []
    if ann.config.exact or len(allowed) > EXACT_FILTER_LIMIT:
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


def to_results(candidates: list[Candidate], catalog: Catalog) -> list[SearchResult]:
    rows = catalog.rows([c.id for c in candidates])
    # an id the catalog no longer has (removed while this snapshot was loaded) is dropped
    present = [c for c in candidates if c.id in rows]
    return [
        SearchResult(rank=rank, id=c.id, path=rows[c.id].path, score=c.score,
                     stage1_score=c.stage1_score, stage1_rank=c.stage1_rank)
        for rank, c in enumerate(present, start=1)
    ]


def drop_near_duplicates(results: list[SearchResult], catalog: Catalog, dim: int,
                         threshold: float = DUPLICATE_COSINE) -> list[SearchResult]:
    """Keep a result unless its stage-1 vector is within ``threshold`` cosine of a better
    ranked result that was kept (bursts, re-saved copies); ranks are renumbered."""
    if len(results) < 2:
        return results
    vectors = catalog.vectors([r.id for r in results], dim)  # (n, D) unit rows
    kept: list[int] = []
    for position in range(len(results)):
        if not kept or float(np.max(vectors[kept] @ vectors[position])) < threshold:
            kept.append(position)
    return [replace(results[position], rank=rank) for rank, position in enumerate(kept, start=1)]
