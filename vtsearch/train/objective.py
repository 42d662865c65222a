"""What training minimises: the scorer's match logits for a batch, and a listwise loss.

Caption → image: each caption against its candidate images (positive first). Image →
text: each caption's image against the caption (first) and its negative texts. The loss
is a softmax cross-entropy with the right answer in column 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..fusion import FusionScorer, pad_tokens
from ..query.sources import RegionSource
from .mining import Examples


def match_logits(scorer: FusionScorer, examples: Examples, rows: Sequence[int], candidates: np.ndarray,
                 regions: RegionSource, device: torch.device) -> torch.Tensor:
    """(B, C) match logits for caption rows and their candidates (positive first)."""
    rows = list(rows)
    batch, count = candidates.shape
    tokens, lengths = pad_tokens([examples.tokens[row] for row in rows])  # (B, T, D), (B,)
    tokens = tokens[:, None].expand(-1, count, -1, -1).reshape(batch * count, tokens.shape[1], -1)  # (B*C, T, D)
    lengths = lengths[:, None].expand(-1, count).reshape(-1)  # (B*C,)
    image_regions = regions.regions(candidates.reshape(-1).tolist())  # (B*C, R, Dr)
    return scorer(tokens.to(device), lengths.to(device), image_regions.to(device))[0].view(batch, count)


def text_logits(scorer: FusionScorer, examples: Examples, rows: Sequence[int],
                text_negatives: list[list[torch.Tensor]], regions: RegionSource,
                device: torch.device) -> torch.Tensor:
    """(B, 1 + K) match logits of each row's image against its caption (first) and its
    negative texts; K is the fewest negatives any row of the batch has."""
    rows = list(rows)
    count = 1 + min(len(text_negatives[row]) for row in rows)
    texts = [token for row in rows for token in [examples.tokens[row], *text_negatives[row][:count - 1]]]
    tokens, lengths = pad_tokens(texts)  # (B*C, T, D), (B*C,)
    image_regions = regions.regions(examples.positives[rows].tolist())  # (B, R, Dr)
    image_regions = image_regions[:, None].expand(-1, count, -1, -1).reshape(
        len(rows) * count, *image_regions.shape[1:])  # (B*C, R, Dr)
    return scorer(tokens.to(device), lengths.to(device), image_regions.to(device))[0].view(len(rows), count)


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0 of (B, C) scores."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
