"""What training minimises.

The caption objective (the default): each caption's tokens predicted from its image's
regions and the tokens before it, and again from "no image" (the scorer's prior; see
``fusion``). Only the right images are read, so a step costs one scorer pass per caption
(two with the prior), against 1 + K for a listwise step over K negatives. In the second
half of the epochs (``train-reranker --swaps``, one by default) each caption is also
contrasted with its word-swapped variants under its image (``swap_contrast``): from the
first epoch, binding improved and recall across unlike scenes fell; from halfway, binding
improved more at little cost in recall (docs/reranker-notes.md).

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

from ..fusion import FusionScorer, TextBatch, mean_token_loss
from ..query.sources import RegionSource
from .mining import Examples, TextTokens

SWAP_WEIGHT = 0.25  # of the swap contrast against the caption loss (at 1, with two swaps: lower recall, less binding)


def caption_batch(examples: Examples, rows: Sequence[int]) -> TextBatch:
    """The captions of ``rows``, padded."""
    return TextBatch.pad([examples.tokens[row] for row in rows], [examples.ids[row] for row in rows])


def caption_loss(scorer: FusionScorer, examples: Examples, rows: Sequence[int], regions: RegionSource,
                 device: torch.device, swaps: list[list[TextTokens]] | None = None) -> torch.Tensor:
    """Next-token cross-entropy of each caption given its image, plus given no image;
    with ``swaps``, plus the swap contrast (``swap_contrast``). A caption and its variants
    go through the scorer in one batch, each image read once."""
    rows = list(rows)
    texts = [(examples.tokens[row], examples.ids[row]) for row in rows]
    owners = list(range(len(rows)))  # which caption's image each text is read under
    slots: list[tuple[int, int]] = []  # (caption, column) of each variant
    if swaps is not None:
        slots = [(owner, column) for owner, row in enumerate(rows) for column in range(len(swaps[row]))]
        texts += [swaps[rows[owner]][column] for owner, column in slots]
        owners += [owner for owner, _ in slots]
    batch = TextBatch.pad([states for states, _ in texts], [ids for _, ids in texts]).to(device)
    image = scorer.read_image(regions.regions(examples.positives[rows].tolist()).to(device))  # (B, R, W)
    given_image = scorer.token_log_probs(scorer.attend(batch, image[owners])[0], batch)  # (B+S, T-1)
    captions = batch.rows(0, len(rows))
    given_nothing = scorer.token_log_probs(scorer.hidden(captions, None)[0], captions)  # (B, T-1)
    loss = mean_token_loss(given_image[:len(rows)], captions) + mean_token_loss(given_nothing, captions)
    if swaps is None:
        return loss
    with torch.no_grad():  # the variants' prior is a fixed offset: no backward through it
        variants = batch.rows(len(rows))
        prior = torch.cat([given_nothing.sum(dim=1), scorer.text_log_likelihood(variants, None)])  # (B+S,)
    return loss + SWAP_WEIGHT * swap_contrast(given_image, prior, batch.lengths, len(rows), slots)


def swap_contrast(given_image: torch.Tensor, prior: torch.Tensor, lengths: torch.Tensor, captions: int,
                  slots: list[tuple[int, int]]) -> torch.Tensor:
    """Each caption against its word-swapped variants (same words, other binding), given
    its image: a listwise loss over their PMI per predicted token, (log p(text | image) −
    log p(text | no image)) / tokens, the caption first. The prior is a fixed offset here
    (not trained by this term), so a variant can only be pushed down through the image.
    Per token, not summed: summed, the term dwarfed the caption loss and the training
    loss jumped from epoch to epoch. ``given_image`` (N, T-1) are token log-probabilities
    and ``prior`` (N,) log p(text | no image) of the ``captions`` first rows, then of the
    variants, whose (caption, column) ``slots`` says; ``lengths`` (N,) their tokens."""
    if not slots:
        return given_image.new_zeros(())
    pmi = (given_image.sum(dim=1) - prior.detach()) / (lengths - 1).clamp(min=1)  # (N,)
    widest = 1 + max(column for _, column in slots)
    scores = torch.full((captions, 1 + widest), -torch.inf, device=pmi.device)  # a row's missing variants: -inf
    scores[:, 0] = pmi[:captions]
    owners = torch.tensor([owner for owner, _ in slots], device=pmi.device)
    columns = torch.tensor([column for _, column in slots], device=pmi.device)
    scores[owners, columns + 1] = pmi[captions:]
    return listwise_loss(scores)


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
    batch = batch.to(device)
    image = scorer.read_image(regions.regions(examples.positives[rows].tolist()).to(device))  # (B, R, W), read once
    hidden = scorer.attend(batch, image.repeat_interleave(count, dim=0))[0]  # (B*C, T, W)
    return scorer.match_logit(hidden, batch).view(len(rows), count)


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0 of (B, C) scores."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
