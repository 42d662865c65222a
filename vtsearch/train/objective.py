"""What training minimises.

The caption objective (the default): each caption's tokens predicted from its image's
regions and the tokens before it, and again from "no image" (the scorer's prior; see
``fusion``). Only the right images are read, so a step costs one scorer pass per caption
(two with the prior), against 1 + K for a listwise step over K negatives.

The match objective: the scorer's match logits for a batch, and a listwise loss.
Caption → image: each caption against its candidate images (positive first). Image →
text: each caption's image against the caption (first) and its negative texts. The loss
is a softmax cross-entropy with the right answer in column 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..fusion import FusionScorer, TextBatch
from ..query.sources import RegionSource
from .mining import Examples, TextTokens


def caption_batch(examples: Examples, rows: Sequence[int]) -> TextBatch:
    """The captions of ``rows``, padded."""
    return TextBatch.pad([examples.tokens[row] for row in rows], [examples.ids[row] for row in rows])


def caption_loss(scorer: FusionScorer, examples: Examples, rows: Sequence[int], regions: RegionSource,
                 device: torch.device) -> torch.Tensor:
    """Next-token cross-entropy of each caption given its image, plus given no image."""
    texts = caption_batch(examples, rows).to(device)
    image_regions = regions.regions(examples.positives[list(rows)].tolist()).to(device)  # (B, R, Dr)
    return scorer.caption_loss(texts, image_regions) + scorer.caption_loss(texts, None)


def match_logits(scorer: FusionScorer, examples: Examples, rows: Sequence[int], candidates: np.ndarray,
                 regions: RegionSource, device: torch.device) -> torch.Tensor:
    """(B, C) match logits for caption rows and their candidates (positive first)."""
    batch, count = candidates.shape
    texts = caption_batch(examples, rows).to(device)
    prior = None
    if scorer.config.score == "caption":  # one prior per caption, not per candidate
        prior = scorer.text_log_likelihood(texts, None).repeat_interleave(count)
    image_regions = regions.regions(candidates.reshape(-1).tolist()).to(device)  # (B*C, R, Dr)
    return scorer(texts.repeat_each(count), image_regions, prior=prior)[0].view(batch, count)


def text_logits(scorer: FusionScorer, examples: Examples, rows: Sequence[int],
                text_negatives: list[list[TextTokens]], regions: RegionSource,
                device: torch.device) -> torch.Tensor:
    """(B, 1 + K) match logits of each row's image against its caption (first) and its
    negative texts; K is the fewest negatives any row of the batch has."""
    rows = list(rows)
    count = 1 + min(len(text_negatives[row]) for row in rows)
    texts = [text for row in rows
             for text in [(examples.tokens[row], examples.ids[row]), *text_negatives[row][:count - 1]]]
    batch = TextBatch.pad([states for states, _ in texts], [ids for _, ids in texts])  # B*C texts
    image_regions = regions.regions(examples.positives[rows].tolist())  # (B, R, Dr)
    image_regions = image_regions.repeat_interleave(count, dim=0)  # (B*C, R, Dr)
    return scorer(batch.to(device), image_regions.to(device))[0].view(len(rows), count)


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0 of (B, C) scores."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
