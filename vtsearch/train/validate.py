"""Validation after each epoch, and the fitted weight ``w`` of ``stage1 + w · match_logit``.

``w`` is a single scalar, so rather than leave it to SGD (which moves it from 0 far too
slowly, leaving a well-trained scorer unheard) it is fitted exactly: a 1-D search for the
``w`` that minimises the listwise loss of the final scores on the validation split, where
each caption's image is ranked within a realistic shortlist (its top stage-1
neighbours). A scorer that does not help there gets ``w = 0``, so training cannot make
search worse than stage 1 on data like the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..fusion import FusionScorer
from ..query.sources import RegionSource
from .mining import Examples, sample_candidates
from .objective import listwise_loss, match_logits, text_logits

VALIDATION_BATCH = 16  # captions scored at once
MIN_GAIN = 0.01  # a w > 0 must lower the validation loss by 1 % over w = 0, or stay 0


@dataclass(frozen=True)
class Validation:
    """How the scorer ranks each held-out caption's image within its stage-1 shortlist."""

    val_loss: float  # listwise loss of the final scores
    val_stage1_top1: float  # how often the right image is first by stage 1 alone
    val_match_top1: float  # ... by the match logit alone
    val_reranked_top1: float  # ... by the final score
    w: float  # the fitted weight of the match logit


def fit_rerank_weight(stage1: np.ndarray, match: np.ndarray, logit_scale: float) -> float:
    """The w ≥ 0 minimising the listwise loss of ``logit_scale · (stage1 + w · match)``.

    A gain within noise of stage 1 alone is no gain: w stays 0 unless it lowers the loss
    by ``MIN_GAIN``, so a scorer that has not learned enough leaves search as it was.
    """
    stage1_t, match_t = torch.from_numpy(stage1), torch.from_numpy(match)
    grid = np.concatenate([[0.0], np.logspace(-4, 1, 101)])
    losses = [float(listwise_loss(logit_scale * (stage1_t + w * match_t))) for w in grid]
    best = int(np.argmin(losses))
    return float(grid[best]) if losses[best] < losses[0] * (1 - MIN_GAIN) else 0.0


@torch.no_grad()
def validate_images(scorer: FusionScorer, examples: Examples, rows: list[int], negatives: int,
                    regions: RegionSource, logit_scale: float, device: torch.device) -> Validation:
    """Fit w on the held-out captions (and set it on ``scorer``), then: how often the
    positive is first in a shortlist of its top stage-1 neighbours, by stage 1 alone, by
    the match logit alone, and by the final score."""
    scorer.eval()
    stage1_parts, match_parts = [], []
    for start in range(0, len(rows), VALIDATION_BATCH):
        chunk = rows[start:start + VALIDATION_BATCH]
        candidates = sample_candidates(examples, chunk, negatives, None)
        match_parts.append(match_logits(scorer, examples, chunk, candidates, regions, device).cpu().numpy())
        stage1_parts.append(examples.stage1(chunk, candidates))
    stage1, match = np.concatenate(stage1_parts), np.concatenate(match_parts)  # (N, C) each
    weight = fit_rerank_weight(stage1, match, logit_scale)
    scorer.rerank_weight.fill_(weight)
    final = stage1 + weight * match
    return Validation(
        val_loss=float(listwise_loss(torch.from_numpy(logit_scale * final))),
        val_stage1_top1=float(np.mean(stage1.argmax(axis=1) == 0)),
        val_match_top1=float(np.mean(match.argmax(axis=1) == 0)),
        val_reranked_top1=float(np.mean(final.argmax(axis=1) == 0)),
        w=weight,
    )


@torch.no_grad()
def validate_texts(scorer: FusionScorer, examples: Examples, rows: list[int],
                   text_negatives: list[list[torch.Tensor]], regions: RegionSource, device: torch.device) -> float:
    """How often the match logit puts an image's own caption above its negative texts."""
    scorer.eval()
    hits = [(text_logits(scorer, examples, rows[start:start + VALIDATION_BATCH], text_negatives, regions, device)
             .argmax(dim=1) == 0).cpu().numpy() for start in range(0, len(rows), VALIDATION_BATCH)]
    return float(np.mean(np.concatenate(hits))) if hits else 0.0
