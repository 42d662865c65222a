"""Training the fusion scorer from captioned images already in the index.

For each caption the positive is its image; the hard negatives are its stage-1
neighbours that are not its image (nor another image with the very same caption), mined
from the index itself (``mining``). The loss is listwise: a softmax over the match logits
of positive + K negatives. The encoder stays frozen: only the scorer learns.

The reverse direction (image → text, ``vtsearch match``) adds a second listwise term: for
each caption's image, the caption against text negatives (see ``mining``).

``w`` in ``final = stage1 + w · match_logit`` is not learnt by SGD but fitted after each
epoch on the validation split, held out by image (``validate``). Early stopping watches
the validation top-1 of the final scores; the best epoch is kept.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import RegionLayout
from ..device import resolve_device
from ..errors import VtsearchError
from ..fusion import FusionConfig, FusionScorer
from ..progress import NoProgress, Progress
from ..query.rerank import Reranker
from ..query.sources import RegionSource
from .mining import Examples, mine_examples, mine_text_negatives, sample_candidates
from .objective import listwise_loss, match_logits, text_logits
from .pairs import Pair, ResolvedPairs, resolve_pairs, split_by_image
from .validate import validate_images, validate_texts

if TYPE_CHECKING:
    from ..index import Index

FALLBACK_VALIDATION_ROWS = 256  # with no held-out images, validate on this many training captions


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


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: its training loss and its validation figures."""

    epoch: int
    train_loss: float
    val_loss: float
    val_stage1_top1: float
    val_match_top1: float
    val_reranked_top1: float
    w: float  # the fitted weight of the match logit
    val_text_top1: float | None  # image → own caption top-1; None when the term is off
    seconds: float  # since training started

    def validation(self) -> dict[str, float]:
        """The validation figures (``val_*``), as the manifest keeps them for the best epoch."""
        return {name: value for name, value in self.to_dict().items() if name.startswith("val")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.val_text_top1 is None:
            del data["val_text_top1"]
        return data


@dataclass(frozen=True)
class TrainReport:
    pairs: int
    used: int
    missing: list[str]
    train_captions: int
    val_captions: int
    epochs_run: int
    best_epoch: int
    history: list[EpochRecord]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs, "used": self.used, "missing": self.missing[:20],
            "train_captions": self.train_captions, "val_captions": self.val_captions,
            "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
            "history": [record.to_dict() for record in self.history], "seconds": self.seconds,
            "missing_count": len(self.missing),
        }


class EarlyStopping:
    """Keeps the weights of the best epoch so far; says when to stop: after ``patience``
    epochs in a row without a better score."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.best_score = -1.0
        self.waited = 0

    def should_stop(self, epoch: int, score: float, scorer: torch.nn.Module) -> bool:
        if score > self.best_score:
            self.best_state, self.best_epoch, self.best_score = copy.deepcopy(scorer.state_dict()), epoch, score
            self.waited = 0
            return False
        self.waited += 1
        return self.waited >= self.patience


@dataclass(frozen=True)
class _TrainingData:
    """What a run trains and validates on, mined once before the first epoch."""

    examples: Examples
    text_negatives: list[list[torch.Tensor]] | None  # None: the image → text term is off
    regions: RegionSource
    train_rows: list[int]  # shuffled in place each epoch
    val_rows: list[int]

    def validation_rows(self) -> list[int]:
        return self.val_rows or self.train_rows[:FALLBACK_VALIDATION_ROWS]


def train_reranker(index: "Index", pairs: Sequence[Pair], options: TrainOptions = TrainOptions(),
                   progress: Progress | None = None,
                   on_epoch: Callable[[EpochRecord], None] | None = None) -> tuple[Reranker, TrainReport]:
    """Train a fusion scorer on ``pairs`` (images already in ``index``); ``on_epoch`` is
    called with each epoch's record as it ends."""
    started = time.perf_counter()
    progress = progress or NoProgress()
    layout, regions = index.regions, index.region_source
    if layout is None or regions is None:
        raise VtsearchError(f"{index.info().encoder.describe()} has no region tokens to rerank with")
    resolved = resolve_pairs(index, pairs)
    if len(resolved.captions) < 2:
        raise VtsearchError(f"only {len(resolved.captions)} of {len(pairs)} pairs have their image in the index")
    device = resolve_device(options.device)
    with _seeded_torch(options.seed, device):
        if len(index) < options.negatives + 1:
            raise VtsearchError(f"the index holds {len(index)} images; training needs more than {options.negatives}")
        data = _mine(index, resolved, regions, options, progress)
        trainer = _Trainer(FusionScorer(_fusion_config(index, layout, options)).to(device), data, options,
                           _logit_scale(index), device)
        history, stopping = trainer.run(progress, on_epoch, started)
    trainer.scorer.load_state_dict(stopping.best_state)
    report = TrainReport(
        pairs=len(pairs), used=len(resolved.captions), missing=resolved.missing,
        train_captions=len(data.train_rows), val_captions=len(data.val_rows), epochs_run=len(history),
        best_epoch=stopping.best_epoch, history=history, seconds=round(time.perf_counter() - started, 1),
    )
    trained = {"pairs": len(resolved.captions), "best_epoch": stopping.best_epoch, "negatives": options.negatives,
               "val": history[stopping.best_epoch - 1].validation(), "trained_at": time.time()}
    return Reranker(trainer.scorer.cpu(), trainer.logit_scale, trained, resolve_device(index.device)), report


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded for the run (the scorer's first weights), and put back as
    they were afterwards, so a run leaves the caller's random draws alone."""
    forks = {"devices": [device], "device_type": device.type} if device.type != "cpu" else {"devices": []}
    with torch.random.fork_rng(**forks):
        torch.manual_seed(seed)
        yield


def _mine(index: "Index", resolved: ResolvedPairs, regions: RegionSource, options: TrainOptions,
          progress: Progress) -> _TrainingData:
    """Hard negatives of every caption (and its image), and the split by image."""
    progress.start(len(resolved.captions))
    examples = mine_examples(index, resolved, max(100, 4 * options.negatives, options.val_shortlist + 8), progress)
    text_negatives = (mine_text_negatives(index, resolved, examples, options.text_negatives, options.seed)
                      if options.text_negatives else None)
    progress.close()
    train_rows, val_rows = split_by_image(resolved.image_ids, options.val_fraction, options.seed)
    return _TrainingData(examples, text_negatives, regions, train_rows, val_rows)


def _fusion_config(index: "Index", layout: RegionLayout, options: TrainOptions) -> FusionConfig:
    return FusionConfig(text_dim=index.encoder.text_token_dim, region_dim=layout.dim, grid=layout.grid,
                        max_tokens=index.encoder.context_length, width=options.width, layers=options.layers,
                        heads=options.heads)


def _logit_scale(index: "Index") -> float:
    scale = getattr(index.encoder.model, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


class _Trainer:
    """One run: the scorer, its optimiser and the data, epoch after epoch."""

    def __init__(self, scorer: FusionScorer, data: _TrainingData, options: TrainOptions, logit_scale: float,
                 device: torch.device):
        self.scorer, self.data, self.options, self.device = scorer, data, options, device
        self.logit_scale = logit_scale
        self.body = [p for name, p in scorer.named_parameters() if name != "rerank_weight"]  # w is fitted
        self.optimizer = torch.optim.AdamW(self.body, lr=options.lr, weight_decay=options.weight_decay)
        self.steps = options.epochs * math.ceil(len(data.train_rows) / options.batch_size)
        # a short warm-up, then a constant rate: binding is learnt late (after a plateau of
        # many epochs on the shapes set), and a decaying rate would stall it
        warmup = max(1, self.steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.candidate_rng = np.random.default_rng(options.seed)
        self.order_rng = random.Random(options.seed)

    def run(self, progress: Progress, on_epoch: Callable[[EpochRecord], None] | None,
            started: float) -> tuple[list[EpochRecord], EarlyStopping]:
        history: list[EpochRecord] = []
        stopping = EarlyStopping(self.options.patience)
        progress.start(self.steps)
        try:
            for epoch in range(1, self.options.epochs + 1):
                train_loss = self.train_epoch(progress)
                record = self.validate(epoch, train_loss, started)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                if stopping.should_stop(epoch, record.val_reranked_top1 - 1e-3 * record.val_loss, self.scorer):
                    break
        finally:
            progress.close()
        return history, stopping

    def train_epoch(self, progress: Progress) -> float:
        """One pass over the shuffled training captions; their mean loss."""
        self.scorer.train()
        rows = self.data.train_rows
        self.order_rng.shuffle(rows)
        losses = []
        for start in range(0, len(rows), self.options.batch_size):
            loss = self.batch_loss(rows[start:start + self.options.batch_size])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.body, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
            progress.advance(1)
        return float(np.mean(losses))

    def batch_loss(self, rows: list[int]) -> torch.Tensor:
        data = self.data
        candidates = sample_candidates(data.examples, rows, self.options.negatives, self.candidate_rng)
        loss = listwise_loss(match_logits(self.scorer, data.examples, rows, candidates, data.regions, self.device))
        if data.text_negatives is not None:
            loss = loss + listwise_loss(text_logits(self.scorer, data.examples, rows, data.text_negatives,
                                                    data.regions, self.device))
        return loss

    def validate(self, epoch: int, train_loss: float, started: float) -> EpochRecord:
        """Fit w and measure the epoch on the validation rows."""
        data, rows = self.data, self.data.validation_rows()
        images = validate_images(self.scorer, data.examples, rows, self.options.val_shortlist - 1, data.regions,
                                 self.logit_scale, self.device)
        texts = (validate_texts(self.scorer, data.examples, rows, data.text_negatives, data.regions, self.device)
                 if data.text_negatives is not None else None)
        return EpochRecord(epoch=epoch, train_loss=train_loss, **asdict(images), val_text_top1=texts,
                           seconds=round(time.perf_counter() - started, 1))
