"""Training the fusion scorer from captioned images already in the index.

For each caption the positive is its image; the hard negatives are its stage-1
neighbours that are not its image (nor another image with the very same caption), mined
from the index itself. The loss is listwise: a softmax over the match logits of
positive + K negatives. The encoder stays frozen: only the scorer learns.

The reverse direction (image → text, ``vtsearch match``) adds a second listwise term: for
each caption's image, the caption against text negatives. Half are the caption with two
of its words swapped (same words, other binding: exactly what one vector per text cannot
tell apart), half the image's stage-1 nearest captions that are not its own.

``w`` in ``final = stage1 + w · match_logit`` is a single scalar, so rather than leave it
to SGD (which moves it from 0 far too slowly, leaving a well-trained scorer unheard) it
is fitted exactly after each epoch: a 1-D search for the ``w`` that minimises the
listwise loss of the final scores on the validation split (held out by image), where each
caption's image is ranked within a realistic shortlist (its top stage-1 neighbours). A
scorer that does not help there gets ``w = 0``, so training cannot make search worse
than stage 1 on data like the validation split. Early stopping watches the validation
top-1 of the final scores; the best epoch is kept.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .catalog import INDEXED
from .device import resolve_device
from .errors import VtsearchError
from .fusion import FusionConfig, FusionScorer, pad_tokens
from .ingest import NoProgress, Progress
from .pairs import Pair
from .rerank import RegionSource, Reranker

if TYPE_CHECKING:
    from .index import Index


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 30
    negatives: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.1
    patience: int = 10  # epochs without a better validation score before stopping
    val_shortlist: int = 50  # validation ranks each caption's image among this many
    text_negatives: int = 8  # image → text term: negative texts per image (0: off)
    width: int = 128
    layers: int = 2
    heads: int = 4
    seed: int = 0
    device: str = "auto"


@dataclass
class ResolvedPairs:
    captions: list[str]
    image_ids: list[int]
    missing: list[str] = field(default_factory=list)  # images not (successfully) indexed


@dataclass
class TrainReport:
    pairs: int
    used: int
    missing: list[str]
    train_captions: int
    val_captions: int
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["missing_count"] = len(self.missing)
        data["missing"] = self.missing[:20]
        return data


def resolve_pairs(index: "Index", pairs: Sequence[Pair]) -> ResolvedPairs:
    """Map pair images to catalog ids; images that are not indexed are reported."""
    entries = index.catalog.entries(sorted({pair.image for pair in pairs}))
    resolved = ResolvedPairs([], [])
    missing = set()
    for pair in pairs:
        entry = entries.get(pair.image)
        if entry is None or entry.status != INDEXED:
            missing.add(pair.image)
            continue
        resolved.captions.append(pair.caption)
        resolved.image_ids.append(entry.id)
    resolved.missing = sorted(missing)
    return resolved


@dataclass
class _Examples:
    """Per caption: its token states, its stage-1 neighbours that are wrong answers, and
    what is needed to score any candidate at stage 1."""

    tokens: list[torch.Tensor]
    positives: np.ndarray  # (N,) the caption's image
    neighbours: list[np.ndarray]  # N × stage-1 ranked wrong answers
    right: list[set[int]]  # N × every image the caption describes
    caption_vectors: np.ndarray  # (N, D)
    image_ids: np.ndarray  # (M,) sorted ids of every indexed image
    image_vectors: np.ndarray  # (M, D) their stage-1 vectors

    def stage1(self, rows: Sequence[int], candidates: np.ndarray) -> np.ndarray:
        """(B, C) stage-1 similarities of candidate ids for caption rows."""
        vectors = self.image_vectors[np.searchsorted(self.image_ids, candidates)]  # (B, C, D)
        return np.einsum("bd,bcd->bc", self.caption_vectors[list(rows)], vectors).astype(np.float32)


def mine_examples(index: "Index", resolved: ResolvedPairs, depth: int, progress: Progress) -> _Examples:
    """Each caption's stage-1 neighbours (top ``depth``) that are not a right answer."""
    right: dict[str, set[int]] = defaultdict(set)  # caption → every image it describes
    for caption, image_id in zip(resolved.captions, resolved.image_ids):
        right[caption].add(image_id)
    chunks = list(index.catalog.embeddings(index.manifest.embed_dim))
    image_ids = np.concatenate([ids for ids, _ in chunks])
    image_vectors = np.concatenate([vectors for _, vectors in chunks])
    tokens: list[torch.Tensor] = []
    vectors = []
    for start in range(0, len(resolved.captions), 256):
        features = index.encoder.encode_text_features(resolved.captions[start:start + 256])
        tokens.extend(features.tokens)
        vectors.append(features.vectors)
        progress.advance(min(256, len(resolved.captions) - start))
    caption_vectors = np.concatenate(vectors)
    neighbours = []
    for start in range(0, len(caption_vectors), 1024):
        for offset, row in enumerate(index.ann.search(caption_vectors[start:start + 1024], depth)):
            wrong = right[resolved.captions[start + offset]]
            neighbours.append(np.array([i for i, _ in row if i not in wrong], dtype=np.int64))
    order = np.argsort(image_ids)
    return _Examples(tokens, np.asarray(resolved.image_ids, dtype=np.int64), neighbours,
                     [right[caption] for caption in resolved.captions], caption_vectors,
                     image_ids[order], image_vectors[order])


STOPWORDS = frozenset("a an the of and or to in on at with by is are its it this that".split())


def swapped_variants(caption: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` captions made by swapping two different content words of ``caption``."""
    words = caption.split()
    slots = [i for i, word in enumerate(words) if word.lower().strip(".,") not in STOPWORDS]
    pairs = [(i, j) for n, i in enumerate(slots) for j in slots[n + 1:] if words[i].lower() != words[j].lower()]
    variants: list[str] = []
    for pick in rng.permutation(len(pairs)):
        i, j = pairs[pick]
        swapped = list(words)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        text = " ".join(swapped)
        if text != caption and text not in variants:
            variants.append(text)
        if len(variants) == count:
            break
    return variants


def mine_text_negatives(index: "Index", resolved: ResolvedPairs, examples: _Examples, count: int,
                        seed: int) -> list[list[torch.Tensor]]:
    """Per caption: token states of ``count`` wrong texts for its image (see module doc)."""
    rng = np.random.default_rng(seed)
    captions = resolved.captions
    own: dict[int, set[str]] = defaultdict(set)  # image → its captions
    for caption, image_id in zip(captions, resolved.image_ids):
        own[image_id].add(caption)
    unique = list(dict.fromkeys(captions))
    first_row = {caption: row for row, caption in reversed(list(enumerate(captions)))}
    unique_vectors = examples.caption_vectors[[first_row[c] for c in unique]]
    swaps = [swapped_variants(caption, math.ceil(count / 2), rng) for caption in captions]
    new_texts = list(dict.fromkeys(text for variants in swaps for text in variants))
    new_tokens: dict[str, torch.Tensor] = {}
    for start in range(0, len(new_texts), 256):
        chunk = new_texts[start:start + 256]
        new_tokens.update(zip(chunk, index.encoder.encode_text_features(chunk).tokens))
    image_vectors = examples.image_vectors[np.searchsorted(examples.image_ids, examples.positives)]
    negatives: list[list[torch.Tensor]] = []
    depth = min(len(unique), 4 * count + 8)
    for row, variants in enumerate(swaps):
        mine = own[examples.positives[row]]
        variants = [text for text in variants if text not in mine]  # a swap may still be true
        tokens = [new_tokens[text] for text in variants]
        scores = unique_vectors @ image_vectors[row]
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(unique) else np.arange(len(unique))
        for position in top[np.argsort(-scores[top], kind="stable")]:
            if len(tokens) >= count:
                break
            text = unique[position]
            if text not in mine and text not in variants:
                tokens.append(examples.tokens[first_row[text]])
        negatives.append(tokens)
    return negatives


def _text_logits(scorer: FusionScorer, examples: _Examples, rows: Sequence[int],
                 text_negatives: list[list[torch.Tensor]], regions: RegionSource,
                 device: torch.device) -> torch.Tensor:
    """(B, 1 + K) match logits of each row's image against its caption (first) and its
    negative texts."""
    rows = list(rows)
    count = 1 + min(len(text_negatives[row]) for row in rows)
    texts = [token for row in rows for token in [examples.tokens[row], *text_negatives[row][:count - 1]]]
    tokens, lengths = pad_tokens(texts)  # (B*C, T, D)
    image_regions = regions.regions(examples.positives[rows].tolist())  # (B, R, Dr)
    image_regions = image_regions[:, None].expand(-1, count, -1, -1).reshape(len(rows) * count, *image_regions.shape[1:])
    return scorer(tokens.to(device), lengths.to(device), image_regions.to(device))[0].view(len(rows), count)


def sample_candidates(examples: _Examples, rows: Sequence[int], negatives: int,
                      rng: np.random.Generator | None) -> np.ndarray:
    """(B, 1 + K) candidate ids, the positive first.

    With ``rng`` (training) the negatives mix three kinds: the hardest stage-1 neighbours
    (same words, other binding: they teach binding), neighbours drawn from deeper in the
    shortlist, and random images of the index (other colours and things: they teach the
    grounding that binding is built on). Half are the hardest: with hard negatives alone
    the scorer learns nothing (the same words give no signal for which word goes with
    which region), measured with scripts/probe_binding.py. Without ``rng`` (validation)
    they are the top stage-1 neighbours in order: with enough of them, a realistic
    shortlist.
    """
    candidates = np.empty((len(rows), negatives + 1), dtype=np.int64)
    for slot, row in enumerate(rows):
        pool = examples.neighbours[row]
        if rng is None:
            picks = list(pool[:negatives])
        else:
            hardest = (negatives + 1) // 2
            deeper = (negatives - hardest) // 2
            picks = list(pool[:hardest])
            rest = pool[hardest:]
            if len(rest):
                picks += rng.choice(rest, size=min(deeper, len(rest)), replace=False).tolist()
        while len(picks) < negatives:  # random images; also fills in for a small index
            pick = int(examples.image_ids[(rng or np.random.default_rng(row)).integers(len(examples.image_ids))])
            if pick not in examples.right[row] and (pick not in picks or len(examples.image_ids) <= negatives):
                picks.append(pick)
        candidates[slot] = [examples.positives[row], *picks]
    return candidates


def _match_logits(scorer: FusionScorer, examples: _Examples, rows: Sequence[int], candidates: np.ndarray,
                  regions: RegionSource, device: torch.device) -> torch.Tensor:
    """(B, C) match logits for caption rows and their candidates (positive first)."""
    rows = list(rows)
    batch, count = candidates.shape
    tokens, lengths = pad_tokens([examples.tokens[row] for row in rows])  # (B, T, D), (B,)
    tokens = tokens[:, None].expand(-1, count, -1, -1).reshape(batch * count, tokens.shape[1], -1)  # (B*C, T, D)
    lengths = lengths[:, None].expand(-1, count).reshape(-1)  # (B*C,)
    image_regions = regions.regions(candidates.reshape(-1).tolist())  # (B*C, R, Dr)
    return scorer(tokens.to(device), lengths.to(device), image_regions.to(device))[0].view(batch, count)


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0 of (B, C) scores."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))


MIN_GAIN = 0.01  # a w > 0 must lower the validation loss by 1 % over w = 0, or stay 0


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


def train_reranker(index: "Index", pairs: Sequence[Pair], options: TrainOptions = TrainOptions(),
                   progress: Progress | None = None,
                   on_epoch: Callable[[dict[str, float]], None] | None = None) -> tuple[Reranker, TrainReport]:
    """Train a fusion scorer on ``pairs`` (images already in ``index``); ``on_epoch`` is
    called with each epoch's record as it ends."""
    started = time.perf_counter()
    progress = progress or NoProgress()
    layout, regions = index.manifest.regions, index.region_source
    if layout is None or regions is None:
        raise VtsearchError(f"{index.manifest.encoder.describe()} has no region tokens to rerank with")
    resolved = resolve_pairs(index, pairs)
    if len(resolved.captions) < 2:
        raise VtsearchError(f"only {len(resolved.captions)} of {len(pairs)} pairs have their image in the index")
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    random.seed(options.seed)

    if len(index.ann) < options.negatives + 1:
        raise VtsearchError(f"the index holds {len(index.ann)} images; training needs more than {options.negatives}")
    progress.start(len(resolved.captions))
    examples = mine_examples(index, resolved, max(100, 4 * options.negatives, options.val_shortlist + 8), progress)
    text_negatives = (mine_text_negatives(index, resolved, examples, options.text_negatives, options.seed)
                      if options.text_negatives else None)
    progress.close()
    rng = np.random.default_rng(options.seed)
    train_rows, val_rows = _split_by_image(resolved.image_ids, options.val_fraction, options.seed)

    config = FusionConfig(text_dim=index.encoder.text_token_dim, region_dim=layout.dim, grid=layout.grid,
                          max_tokens=index.encoder.context_length, width=options.width, layers=options.layers,
                          heads=options.heads)
    scorer = FusionScorer(config).to(device)
    logit_scale = _logit_scale(index)
    body = [p for name, p in scorer.named_parameters() if name != "rerank_weight"]  # w is fitted
    optimizer = torch.optim.AdamW(body, lr=options.lr, weight_decay=options.weight_decay)
    steps = options.epochs * math.ceil(len(train_rows) / options.batch_size)
    # a short warm-up, then a constant rate: binding is learnt late (after a plateau of
    # many epochs on the shapes set), and a decaying rate would stall it
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    history: list[dict[str, float]] = []
    best_state, best_epoch, best_score, waited = None, 0, -1.0, 0
    progress.start(steps)
    try:
        for epoch in range(1, options.epochs + 1):
            scorer.train()
            random.shuffle(train_rows)
            losses = []
            for start in range(0, len(train_rows), options.batch_size):
                rows = train_rows[start:start + options.batch_size]
                candidates = sample_candidates(examples, rows, options.negatives, rng)
                loss = listwise_loss(_match_logits(scorer, examples, rows, candidates, regions, device))
                if text_negatives is not None:
                    loss = loss + listwise_loss(_text_logits(scorer, examples, rows, text_negatives, regions, device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(body, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                progress.advance(1)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                      **_validate(scorer, examples, val_rows or train_rows[:256], options.val_shortlist - 1,
                                  regions, logit_scale, device)}
            if text_negatives is not None:
                record["val_text_top1"] = _validate_texts(scorer, examples, val_rows or train_rows[:256],
                                                          text_negatives, regions, device)
            record["seconds"] = round(time.perf_counter() - started, 1)
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            score = record["val_reranked_top1"] - 1e-3 * record["val_loss"]
            if score > best_score:
                best_state, best_epoch, best_score, waited = copy.deepcopy(scorer.state_dict()), epoch, score, 0
            else:
                waited += 1
                if waited >= options.patience:
                    break
    finally:
        progress.close()
    scorer.load_state_dict(best_state)
    report = TrainReport(
        pairs=len(pairs), used=len(resolved.captions), missing=resolved.missing,
        train_captions=len(train_rows), val_captions=len(val_rows), epochs_run=len(history),
        best_epoch=best_epoch, history=history, seconds=round(time.perf_counter() - started, 1),
    )
    trained = {"pairs": len(resolved.captions), "best_epoch": best_epoch, "negatives": options.negatives,
               "val": {k: v for k, v in history[best_epoch - 1].items() if k.startswith("val")},
               "trained_at": time.time()}
    return Reranker(scorer.cpu(), logit_scale, trained, resolve_device(index.device)), report


@torch.no_grad()
def _validate(scorer: FusionScorer, examples: _Examples, rows: list[int], negatives: int,
              regions: RegionSource, logit_scale: float, device: torch.device) -> dict[str, float]:
    """Fit w on the held-out captions, then: how often the positive is first in a shortlist
    of its top stage-1 neighbours, by stage 1 alone, by the match logit alone, and by the
    final score."""
    scorer.eval()
    stage1_parts, match_parts = [], []
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        candidates = sample_candidates(examples, chunk, negatives, None)
        match_parts.append(_match_logits(scorer, examples, chunk, candidates, regions, device).cpu().numpy())
        stage1_parts.append(examples.stage1(chunk, candidates))
    stage1, match = np.concatenate(stage1_parts), np.concatenate(match_parts)
    weight = fit_rerank_weight(stage1, match, logit_scale)
    scorer.rerank_weight.fill_(weight)
    final = stage1 + weight * match
    return {
        "val_loss": float(listwise_loss(torch.from_numpy(logit_scale * final))),
        "val_stage1_top1": float(np.mean(stage1.argmax(axis=1) == 0)),
        "val_match_top1": float(np.mean(match.argmax(axis=1) == 0)),
        "val_reranked_top1": float(np.mean(final.argmax(axis=1) == 0)),
        "w": weight,
    }


@torch.no_grad()
def _validate_texts(scorer: FusionScorer, examples: _Examples, rows: list[int],
                    text_negatives: list[list[torch.Tensor]], regions: RegionSource, device: torch.device) -> float:
    """How often the match logit puts an image's own caption above its negative texts."""
    scorer.eval()
    hits = [(_text_logits(scorer, examples, rows[start:start + 16], text_negatives, regions, device)
             .argmax(dim=1) == 0).cpu().numpy() for start in range(0, len(rows), 16)]
    return float(np.mean(np.concatenate(hits))) if hits else 0.0


def _split_by_image(image_ids: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    images = sorted(set(image_ids))
    random.Random(seed).shuffle(images)
    held_out = set(images[: int(len(images) * fraction)])
    train = [row for row, image_id in enumerate(image_ids) if image_id not in held_out]
    val = [row for row, image_id in enumerate(image_ids) if image_id in held_out]
    return train, val


def _logit_scale(index: "Index") -> float:
    scale = getattr(index.encoder.model, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
