"""Image → text: the texts that best describe one image.

Candidates come from the index's text collection (its own FAISS index, built in memory
from the catalog) or from ad-hoc labels; the fusion scorer reorders the top
``recall_k`` when it would change their order. :func:`rank_texts` is the one ranking
both ``vtsearch match`` and the evaluation use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import AnnConfig
from ..errors import NoTextCollectionError, QueryError
from ..records import MatchResponse, MatchResult
from ..store.ann import AnnIndex
from ..store.catalog import Catalog
from .context import QueryContext
from .images import QueryImage, resolve_image
from .rerank import Stage2
from .search import check_k
from .texts import check_text_value


@dataclass(frozen=True)
class MatchRequest:
    image: QueryImage
    k: int = 10
    recall_k: int = 100
    rerank: bool = True
    labels: Sequence[str] | None = None  # ad-hoc candidates instead of the collection


@dataclass(frozen=True)
class TextCandidate:
    id: int | None  # the collection's id; None for an ad-hoc label
    text: str
    stage1_score: float


class TextIndex:
    """The text collection's FAISS index, built from the catalog when its texts change."""

    def __init__(self, catalog: Catalog, dim: int):
        self.catalog = catalog
        self.dim = dim
        self._built: tuple[int, AnnIndex] | None = None  # (texts revision, index)

    def ann(self) -> AnnIndex:
        revision = self.catalog.texts_revision()
        if self._built is None or self._built[0] != revision:
            ids, vectors = self.catalog.text_embeddings(self.dim)
            ann = AnnIndex.empty(self.dim, AnnConfig())
            ann.add(ids, vectors)
            self._built = (revision, ann)
        return self._built[1]

    def candidates(self, vector: np.ndarray, wanted: int) -> list[TextCandidate]:
        hits = self.ann().search(vector.reshape(1, -1), wanted)[0]
        rows = {row.id: row for row in self.catalog.text_rows([i for i, _ in hits])}
        found = [TextCandidate(i, rows[i].text, score) for i, score in hits if i in rows]
        if not found and self.catalog.text_count() == 0:
            raise NoTextCollectionError("the index has no text collection")
        return found


def label_candidates(labels: Sequence[str], vector: np.ndarray, wanted: int, context: QueryContext) -> list[TextCandidate]:
    texts = list(dict.fromkeys(check_text_value(label, f"label {n}") for n, label in enumerate(labels, 1)))
    if not texts:
        raise QueryError("give at least one label")
    scores = context.encoder.encode_texts(texts) @ vector
    order = np.argsort(-scores, kind="stable")[:wanted]
    return [TextCandidate(None, texts[i], float(scores[i])) for i in order]


def match(context: QueryContext, texts: TextIndex, request: MatchRequest) -> MatchResponse:
    check_k(request.k)
    check_k(request.recall_k, "recall_k")
    started = time.perf_counter()
    image = resolve_image(request.image, context)
    timings = {"encode": _since(started)}
    started = time.perf_counter()
    scorer = context.scorer(request.rerank)
    wanted = max(request.k, request.recall_k) if scorer else request.k
    if request.labels is not None:
        candidates = label_candidates(request.labels, image.vector, wanted, context)
    else:
        candidates = texts.candidates(image.vector, wanted)
    timings["ann"] = _since(started)
    stage1 = np.array([c.stage1_score for c in candidates], dtype=np.float32)
    order, final = np.arange(len(candidates)), stage1
    if scorer and candidates:
        started = time.perf_counter()
        order, final = rank_texts(scorer[0], context, [c.text for c in candidates], stage1, image.regions(context))
        timings["rerank"] = _since(started)
    results = [MatchResult(rank=rank, id=candidates[i].id, text=candidates[i].text, score=float(final[i]),
                           stage1_score=float(stage1[i]), stage1_rank=int(i) + 1)
               for rank, i in enumerate(order[:request.k], 1)]
    return MatchResponse(image=image.name, results=results, reranked=scorer is not None, timings_ms=timings)


def rank_texts(reranker: Stage2, context: QueryContext, texts: list[str], stage1: np.ndarray,
               regions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(order, final scores) of candidate ``texts`` for one image's (R, D) regions."""
    features = context.encoder.encode_text_features(texts)
    output = reranker.rerank_texts(features.tokens, features.ids, stage1, regions, hidden=features.hidden)
    return output.order, output.final


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
