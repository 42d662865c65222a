"""The query path's one entry point: a text, an image or a vector in; ranked images out.

    request ──▶ checked once ──▶ encoded (text: vector + token states) ──▶ recall (FAISS,
    within the filter) ──▶ rerank (the fusion scorer, text queries) ──▶ catalog rows
    ──▶ near-duplicates dropped (when asked) ──▶ SearchResponse
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import QueryError
from ..filters import SearchFilter
from ..records import SearchResponse, SearchResult
from ..store.catalog import Catalog
from .context import QueryContext
from .images import QueryImage, resolve_image
from .recall import recall

MAX_K = 10_000
MAX_QUERY_CHARS = 10_000  # far past any text tower's context; longer input is cut first
DUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for "the same picture"
DEDUP_BLOCK = 1024  # results compared per matrix product when dropping near-duplicates


@dataclass(frozen=True)
class SearchRequest:
    """One search: exactly one of ``text``, ``image`` or ``vector``."""

    text: str | None = None
    image: QueryImage | None = None
    vector: np.ndarray | None = None  # in the encoder's space (normalised here)
    k: int = 10
    recall_k: int = 100  # the shortlist the reranker reorders
    rerank: bool = True
    filters: SearchFilter | None = None
    deduplicate: bool = False  # drop near-duplicates of better ranked results

    def checked(self) -> "SearchRequest":
        check_k(self.k)
        check_k(self.recall_k, "recall_k")
        if sum(given is not None for given in (self.text, self.image, self.vector)) != 1:
            raise QueryError("give a query text or a query image (one of them)")
        if self.text is not None:
            return replace(self, text=check_text(self.text)[:MAX_QUERY_CHARS])
        return self


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
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the query text is not valid Unicode (it holds a lone surrogate)") from None
    return text.strip()


def check_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    """A query vector as a (D,) float32 unit vector; finite, nonzero and ``dim`` wide."""
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    if len(vector) != dim:
        raise QueryError(f"the query vector has {len(vector)} numbers; this index's vectors have {dim}")
    if not np.isfinite(vector).all():
        raise QueryError("the query vector holds a value that is not a finite number")
    scale = np.abs(vector).max()
    if scale == 0:
        raise QueryError("the query vector is all zeros")
    if 1e-15 < scale < 1e15:  # as the encoder's own vectors: normalised in float32, as they are
        single = vector.astype(np.float32)
        return single / float(np.linalg.norm(single))
    vector = vector / scale  # huge or tiny values: normalised in float64 without overflow
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass(frozen=True)
class Candidate:
    id: int
    stage1_score: float
    stage1_rank: int
    score: float


@dataclass(frozen=True)
class EncodedQuery:
    vector: np.ndarray  # (D,) unit vector: stage 1
    tokens: torch.Tensor | None  # (T, Dt) token states: stage 2 (text queries only)
    ids: torch.Tensor | None  # (T,) their token ids
    notices: list[str]
    hidden: torch.Tensor | None = None  # (T, W) the tower's states before its final norm (CoCa)


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round((now - self._last) * 1000.0, 3)
        self._last = now


def search(context: QueryContext, request: SearchRequest) -> SearchResponse:
    """Recall ``max(k, recall_k)`` candidates, rerank them when the scorer would change
    their order, keep ``k``. Without a scorer (or without text: query by example or by
    vector) only ``k`` are recalled."""
    request = request.checked()
    clock = _Clock()
    query = encode_query(context, request)
    clock.lap("encode")
    scorer = context.scorer(request.rerank) if query.tokens is not None else None
    wanted = max(request.k, request.recall_k) if scorer else request.k
    hits = recall(query.vector, wanted, context.ann, context.catalog, request.filters, context.exact_filter_limit)
    clock.lap("ann")
    candidates = [Candidate(image_id, score, rank, score) for rank, (image_id, score) in enumerate(hits, 1)]
    if scorer and candidates:
        reranker, region_source = scorer
        cache = context.load_read_cache()  # the shortlist as the trained scorer reads it, kept by the index
        ids = [c.id for c in candidates]
        regions = cache.images(ids) if cache is not None else region_source.regions(ids)
        clock.lap("regions")
        output = reranker.rerank(query.tokens, query.ids, np.array([c.stage1_score for c in candidates]), regions,
                                 hidden=query.hidden)
        candidates = [replace(candidates[i], score=float(output.final[i])) for i in output.order]
        clock.lap("rerank")
    results = to_results(candidates[:request.k], context.catalog)
    if request.deduplicate:
        results = drop_near_duplicates(results, context.catalog, context.embed_dim)
    return SearchResponse(results, scorer is not None, clock.timings, query.notices)


def encode_query(context: QueryContext, request: SearchRequest) -> EncodedQuery:
    if request.vector is not None:
        return EncodedQuery(check_vector(request.vector, context.embed_dim), None, None, [])
    if request.image is not None:
        return EncodedQuery(resolve_image(request.image, context).vector, None, None, [])
    encoder = context.encoder
    features = encoder.encode_text_features([request.text])
    return EncodedQuery(features.vectors[0], features.tokens[0], features.ids[0], length_notices(encoder, request.text),
                        None if features.hidden is None else features.hidden[0])


def length_notices(encoder, text: str) -> list[str]:
    """A notice when the text tower reads only the start of ``text``."""
    if encoder.fits_context(text):
        return []
    count, context = encoder.token_count(text), encoder.context_length
    at_least = "at least " if count >= 4 * context else ""
    return [f"the query is {at_least}{count} tokens long; the model reads the first {context} "
            "and ignores the rest"]


def to_results(candidates: list[Candidate], catalog: Catalog) -> list[SearchResult]:
    rows = catalog.rows([c.id for c in candidates])
    # an id the catalog no longer has (removed while this snapshot was loaded) is dropped
    present = [c for c in candidates if c.id in rows]
    return [
        SearchResult(rank=rank, id=c.id, path=rows[c.id].path, score=c.score, stage1_score=c.stage1_score,
                     stage1_rank=c.stage1_rank, width=rows[c.id].width, height=rows[c.id].height,
                     format=rows[c.id].format)
        for rank, c in enumerate(present, start=1)
    ]


def drop_near_duplicates(results: list[SearchResult], catalog: Catalog, dim: int,
                         threshold: float = DUPLICATE_COSINE) -> list[SearchResult]:
    """Keep a result unless its stage-1 vector is within ``threshold`` cosine of a better
    ranked result that was kept (bursts, re-saved copies); ranks are renumbered."""
    if len(results) < 2:
        return results
    kept = first_of_near_duplicates(catalog.vectors([r.id for r in results], dim), threshold)
    return [replace(results[position], rank=rank) for rank, position in enumerate(kept, start=1)]


def first_of_near_duplicates(vectors: np.ndarray, threshold: float, block: int = DEDUP_BLOCK) -> list[int]:
    """Positions a greedy pass in rank order keeps: a row is kept unless its cosine with a
    kept row above it reaches ``threshold``. Rows are compared in blocks by matrix products
    (every earlier kept row at once); only the decisions inside a block are sequential."""
    kept: list[int] = []
    for start in range(0, len(vectors), block):
        rows = vectors[start:start + block]  # (b, D) unit rows
        dropped = np.zeros(len(rows), dtype=bool)
        if kept:
            dropped |= (vectors[kept] @ rows.T).max(axis=0) >= threshold  # (m, b) → (b,)
        within = rows @ rows.T  # (b, b)
        for position in range(len(rows)):
            if not dropped[position]:
                kept.append(start + position)
                dropped[position + 1:] |= within[position, position + 1:] >= threshold
    return kept
