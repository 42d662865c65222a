"""``vtsearch eval``: recall at 1/5/10 before and after reranking, on a captioned set.

Each caption is a query over the whole index as the gallery; its right answer is its
own image. The reverse direction (image → text) is reported too: each image ranks the
candidate texts, and any of its own captions is a right answer. Stage 1 ranks the top
``recall_k``; the reranker reorders them. The recall ceiling is how often the right
image is inside the shortlist at all (no reranker can do better). Latencies are medians
per query and stage.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..errors import VtsearchError
from ..progress import NoProgress, Progress
from .pairs import Pair, ResolvedPairs, resolve_pairs

if TYPE_CHECKING:
    from ..index import Index

KS = (1, 5, 10)
ENCODE_BATCH = 256  # texts per encoder call


@dataclass(frozen=True)
class ImageToTextReport:
    """Image → text recall: each evaluated image ranks the candidate texts."""

    stage1: dict[str, float]  # R@1/5/10 by cosine alone
    reranked: dict[str, float]  # ... after the reranker reorders the shortlist
    recall_ceiling: float  # how often an own caption is in the shortlist at all
    n_images: int
    candidates: int  # candidate texts ranked
    candidate_source: str  # "collection" (the index's texts) or "captions" (the evaluated ones)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalReport:
    n_queries: int
    missing: list[str]
    recall_k: int
    stage1: dict[str, float]
    reranked: dict[str, float]
    recall_ceiling: float
    latency_ms: dict[str, float]
    reranker_trained: bool
    image_to_text: ImageToTextReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_to_image": {"stage1": self.stage1, "reranked": self.reranked,
                              "recall_ceiling": self.recall_ceiling},
            "n_queries": self.n_queries,
            "recall_k": self.recall_k,
            "missing": len(self.missing),
            "reranker_trained": self.reranker_trained,
            "latency_ms": self.latency_ms,
            **({"image_to_text": self.image_to_text.to_dict()} if self.image_to_text is not None else {}),
        }


def recall_at(ranks: Sequence[int | None], ks: Sequence[int] = KS) -> dict[str, float]:
    """Fraction of queries whose right answer is within the top k (rank is 1-based)."""
    return {f"R@{k}": float(np.mean([rank is not None and rank <= k for rank in ranks])) for k in ks}


def evaluate(index: "Index", pairs: Sequence[Pair], recall_k: int = 100,
             progress: Progress | None = None) -> EvalReport:
    """Text → image and image → text recall of ``pairs`` (images in ``index``)."""
    progress = progress or NoProgress()
    resolved = resolve_pairs(index, pairs)
    if not resolved.captions:
        raise VtsearchError(f"none of the {len(pairs)} pairs has its image in the index")
    stage1_ranks, reranked_ranks, timings = _rank_captions(index, resolved, recall_k, progress)
    reranker = index.reranker
    image_to_text = evaluate_image_to_text(index, resolved.captions, resolved.image_ids, recall_k)
    return EvalReport(
        n_queries=len(resolved.captions), missing=resolved.missing, recall_k=recall_k,
        stage1=recall_at(stage1_ranks), reranked=recall_at(reranked_ranks),
        recall_ceiling=float(np.mean([rank is not None for rank in stage1_ranks])),
        latency_ms=_median_latency(timings), reranker_trained=bool(reranker and reranker.is_trained),
        image_to_text=image_to_text,
    )


def _rank_captions(index: "Index", resolved: ResolvedPairs, recall_k: int, progress: Progress
                   ) -> tuple[list[int | None], list[int | None], dict[str, list[float]]]:
    """Each caption's image's rank by stage 1 and after reranking (None: not in the
    shortlist), and each stage's time per query."""
    stage1_ranks: list[int | None] = []
    reranked_ranks: list[int | None] = []
    timings: dict[str, list[float]] = {}
    progress.start(len(resolved.captions))
    try:
        for caption, image_id in zip(resolved.captions, resolved.image_ids):
            response = index.query(caption, k=recall_k, recall_k=recall_k, rerank=True)
            reranked_ranks.append(next((r.rank for r in response.results if r.id == image_id), None))
            stage1_ranks.append(next((r.stage1_rank for r in response.results if r.id == image_id), None))
            for stage, milliseconds in response.timings_ms.items():
                timings.setdefault(stage, []).append(milliseconds)
            progress.advance(1)
    finally:
        progress.close()
    return stage1_ranks, reranked_ranks, timings


def _median_latency(timings: dict[str, list[float]]) -> dict[str, float]:
    """Median milliseconds per stage, and per query for stage 1 (encode + ann) and stage 2
    (regions + rerank, when the scorer ran)."""
    latency = {stage: round(statistics.median(values), 3) for stage, values in timings.items()}
    latency["stage1"] = round(statistics.median(
        [a + b for a, b in zip(timings.get("encode", []), timings.get("ann", []))]), 3)
    if "rerank" in timings:
        latency["stage2"] = round(statistics.median(
            [a + b for a, b in zip(timings.get("regions", []), timings["rerank"])]), 3)
    return latency


def evaluate_image_to_text(index: "Index", captions: Sequence[str], image_ids: Sequence[int],
                           recall_k: int) -> ImageToTextReport:
    """Image → text R@1/5/10: each evaluated image ranks the candidate texts — the index's
    text collection when it has one, else the evaluated captions — and a hit is any of its
    own captions. Stage 1 ranks by cosine; the reranker reorders the top ``recall_k``."""
    texts, vectors, source = _candidate_texts(index, captions)
    position = {text: number for number, text in enumerate(texts)}
    right: dict[int, set[int]] = {}  # image → positions of its own captions among the texts
    for caption, image_id in zip(captions, image_ids):
        if caption in position:
            right.setdefault(image_id, set()).add(position[caption])
    stage1_ranks: list[int | None] = []
    reranked_ranks: list[int | None] = []
    images = sorted(right)
    reranker = index.reranker
    scorer = reranker if reranker is not None and reranker.changes_order else None
    features = _TextFeatures(index)
    for image_id, image_vector in zip(images, index.vectors(images)):
        scores = vectors @ image_vector  # (T,)
        shortlist = np.argsort(-scores, kind="stable")[:recall_k]
        order = np.arange(len(shortlist))  # the scorer keeps stage-1 order
        if scorer is not None:  # what Index.match does, with each text encoded once for all images
            tokens, ids, hidden = features.of([texts[i] for i in shortlist])
            regions = index.region_source.regions([image_id])[0]
            order = scorer.rerank_texts(tokens, ids, scores[shortlist], regions, hidden=hidden).order
        hits = right[image_id]
        stage1_ranks.append(next((rank for rank, i in enumerate(shortlist, 1) if i in hits), None))
        reranked_ranks.append(next((rank for rank, i in enumerate(shortlist[order], 1) if i in hits), None))
    return ImageToTextReport(
        stage1=recall_at(stage1_ranks), reranked=recall_at(reranked_ranks),
        recall_ceiling=float(np.mean([rank is not None for rank in stage1_ranks])) if images else 0.0,
        n_images=len(images), candidates=len(texts), candidate_source=source,
    )


class _TextFeatures:
    """Token states and ids of candidate texts, each encoded once (up to ``MEMO_TEXTS`` kept)."""

    MEMO_TEXTS = 20_000

    def __init__(self, index: "Index"):
        self.index = index
        self.memo: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def of(self, texts: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
        """The texts' token states, ids and (CoCa) states before the tower's final norm."""
        new = list(dict.fromkeys(text for text in texts if text not in self.memo))
        if len(self.memo) + len(new) > self.MEMO_TEXTS:
            self.memo.clear()
            new = list(dict.fromkeys(texts))
        for start in range(0, len(new), ENCODE_BATCH):
            chunk = new[start:start + ENCODE_BATCH]
            encoded = self.index.encoder.encode_text_features(chunk)
            hidden = encoded.hidden if encoded.hidden is not None else [None] * len(chunk)
            self.memo.update(zip(chunk, zip(encoded.tokens, encoded.ids, hidden)))
        rows = [self.memo[text] for text in texts]
        hidden = [row[2] for row in rows]
        complete = all(row is not None for row in hidden)
        return [row[0] for row in rows], [row[1] for row in rows], hidden if complete else None


def _candidate_texts(index: "Index", captions: Sequence[str]) -> tuple[list[str], np.ndarray, str]:
    """The texts images are ranked against, their (T, D) unit vectors, and their source."""
    if index.text_count():
        texts, vectors = index.text_collection()
        return texts, vectors, "collection"
    texts = list(dict.fromkeys(captions))
    vectors = np.concatenate([index.encoder.encode_texts(texts[start:start + ENCODE_BATCH])
                              for start in range(0, len(texts), ENCODE_BATCH)])
    return texts, vectors, "captions"
