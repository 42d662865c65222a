"""Training the fusion scorer from captioned images already in the index.

The caption objective (the default; see ``objective``): the scorer learns to say each
caption's words from its image's regions, and from halfway through the run also to score
it above its word-swapped variants (``options.swaps``). The match objective: for each
caption the positive is its image; the hard negatives are its stage-1 neighbours that
are not its image (nor another image with the very same caption), mined from the index itself
(``mining``), and the loss is listwise over positive + K negatives, with a second
listwise term for image → text (the caption against text negatives). Either way the
encoder stays frozen: only the scorer learns. The index's regions are read into memory
once (``bank``), and every caption's token states computed once.

``w`` in ``final = stage1 + w · match_logit`` is not learnt by SGD but fitted after each
epoch on the validation split, held out by image (``validate``). The epoch kept is the one
whose final scores rank the validation captions' images best by the listwise loss (the
loss ``w`` is fitted to): over a few hundred captions top-1 moves by its noise from one
epoch to the next, and picking the epoch by it kept early ones, before the word swaps had
done their work.
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
from ..fusion import FusionConfig, FusionScorer, head_cutoffs
from ..progress import NoProgress, Progress
from ..query.rerank import Reranker
from ..query.sources import RegionSource
from .bank import RegionBank
from .mining import (Examples, TextTokens, encode_swaps, mine_examples, mine_text_negatives, sample_candidates,
                     swap_texts)
from .objective import caption_loss, listwise_loss, match_logits, text_logits
from .pairs import Pair, ResolvedPairs, resolve_pairs, split_by_image
from .validate import validate_images, validate_texts

if TYPE_CHECKING:
    from ..index import Index

ESTIMATE_STEPS = 10  # the run's length is estimated from its first steps (and a validation of a sample)
ESTIMATE_VALIDATION_SHARE = 8  # ... of this share of the validation captions
ESTIMATE_SWAP_STEPS = 3  # ... and of this many steps with word swaps, when later epochs have them
VALIDATION_ROWS = 400  # validation scores at most this many held-out captions
MAX_VOCAB = 4096  # the caption head names this many of the training captions' commonest tokens


@dataclass(frozen=True)
class TrainOptions:
    objective: str = "caption"  # or "match" (listwise, the scorers before the caption head)
    epochs: int = 20
    negatives: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.1
    patience: int = 5  # epochs in a row without a better validation score or loss before stopping
    val_shortlist: int = 50  # validation ranks each caption's image among this many
    text_negatives: int = 8  # image → text term: negative texts per image (0: off)
    swaps: int = 1  # caption objective: word-swapped variants each caption is contrasted with (0: off)
    swaps_from: float = 0.5  # ... from the epoch after this fraction of the epochs (caption loss alone before)
    width: int = 128
    layers: int = 2
    region_layers: int = 1  # self-attention blocks among an image's regions before the text reads them
    heads: int = 4
    dropout: float = 0.0  # in the scorer's attention and MLPs, while training
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
    w: float  # the fitted weight of the match logit (search)
    val_text_top1: float | None  # image → own caption top-1; None when the term is off
    seconds: float  # since training started
    val_caption_loss: float | None = None  # the caption objective on the validation captions
    text_w: float | None = None  # the weight ``match`` ranks texts with (``validate.fit_text_weight``)

    @property
    def stopping_loss(self) -> float:
        """What early stopping watches beside the fused loss: the held-out caption loss, or for the
        match objective the validation loss."""
        return self.val_loss if self.val_caption_loss is None else self.val_caption_loss

    def validation(self) -> dict[str, float]:
        """The validation figures (``val_*``) and the fitted ``w``, as the manifest keeps
        them for the best epoch."""
        return {name: value for name, value in self.to_dict().items()
                if name.startswith("val") or name in ("w", "text_w")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("val_text_top1", "val_caption_loss", "text_w"):
            if data[name] is None:
                del data[name]
        return data


@dataclass(frozen=True)
class TrainPlan:
    """How long a run will take: measured on its first steps and a validation pass, and
    reported before the run goes on (early stopping may end it sooner). Epochs with word
    swaps (``swap_epochs`` of them, the last) take ``swap_step_seconds`` a step."""

    epochs: int
    steps_per_epoch: int
    step_seconds: float
    validation_seconds: float
    swap_epochs: int = 0
    swap_step_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        plain = self.epochs - self.swap_epochs
        return (plain * self.steps_per_epoch * self.step_seconds + self.epochs * self.validation_seconds
                + self.swap_epochs * self.steps_per_epoch * self.swap_step_seconds)


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
    """Keeps the weights of the best epoch so far (by ``score``: the trainer passes the
    fused validation loss, negated); says when to stop: after ``patience`` epochs in a row
    in which neither the score nor a second loss (the held-out caption loss) got better.
    The caption loss rises a little once the word swaps start while the fused loss still
    falls, and the other way round early on, so the run goes on while either does."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.best_score = -math.inf
        self.best_loss = math.inf
        self.waited = 0

    def should_stop(self, epoch: int, score: float, loss: float, scorer: torch.nn.Module) -> bool:
        improved = loss < self.best_loss
        self.best_loss = min(loss, self.best_loss)
        if score > self.best_score:
            self.best_state, self.best_epoch, self.best_score = copy.deepcopy(scorer.state_dict()), epoch, score
            improved = True
        self.waited = 0 if improved else self.waited + 1
        return self.waited >= self.patience


@dataclass(frozen=True)
class _TrainingData:
    """What a run trains and validates on, mined once before the first epoch."""

    examples: Examples
    text_negatives: list[list[TextTokens]] | None  # None: the image → text term is off
    swaps: list[list[TextTokens]] | None  # per caption, its word-swapped variants; None: the contrast is off
    regions: RegionSource
    train_rows: list[int]  # shuffled in place each epoch
    val_rows: list[int]  # held out
    checked_rows: list[int]  # what each epoch is validated on


def _validation_rows(train_rows: list[int], val_rows: list[int]) -> list[int]:
    """The held-out captions, or with none held out the training captions; at most
    ``VALIDATION_ROWS`` of them (a fixed sample)."""
    rows = val_rows or sorted(train_rows)
    if len(rows) <= VALIDATION_ROWS:
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, VALIDATION_ROWS).astype(int)]


def train_reranker(index: "Index", pairs: Sequence[Pair], options: TrainOptions = TrainOptions(),
                   progress: Progress | None = None, on_epoch: Callable[[EpochRecord], None] | None = None,
                   on_plan: Callable[[TrainPlan], None] | None = None) -> tuple[Reranker, TrainReport]:
    """Train a fusion scorer on ``pairs`` (images already in ``index``); ``on_plan`` is
    called once with the run's estimated length, ``on_epoch`` with each epoch's record
    as it ends."""
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
        data = _mine(index, resolved, regions, layout, options, progress, device)
        config = _fusion_config(index, layout, options, data.examples)
        trainer = _Trainer(FusionScorer(config).to(device), data, options, _logit_scale(index), device)
        history, stopping = trainer.run(progress, on_epoch, on_plan, started)
    trainer.scorer.load_state_dict(stopping.best_state)
    report = TrainReport(
        pairs=len(pairs), used=len(resolved.captions), missing=resolved.missing,
        train_captions=len(data.train_rows), val_captions=len(data.val_rows), epochs_run=len(history),
        best_epoch=stopping.best_epoch, history=history, seconds=round(time.perf_counter() - started, 1),
    )
    trained = {"pairs": len(resolved.captions), "best_epoch": stopping.best_epoch, "negatives": options.negatives,
               "val": history[stopping.best_epoch - 1].validation(), "trained_at": time.time()}
    reranker = Reranker(trainer.scorer.cpu(), trainer.logit_scale, trained, resolve_device(index.device),
                        index.encoder.precision)
    return reranker, report


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded for the run (the scorer's first weights), and put back as
    they were afterwards, so a run leaves the caller's random draws alone."""
    with _forked_rng(device):
        torch.manual_seed(seed)
        yield


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """torch's generators (of the CPU, and of ``device``) put back as they were after the block."""
    forks = {"devices": [device], "device_type": device.type} if device.type != "cpu" else {"devices": []}
    return torch.random.fork_rng(**forks)


def _mine(index: "Index", resolved: ResolvedPairs, regions: RegionSource, layout: RegionLayout,
          options: TrainOptions, progress: Progress, device: torch.device) -> _TrainingData:
    """The split by image, every caption's token states, hard negatives (and its image's)
    of the captions that need them (the caption objective: only those validated on), and
    the index's regions in memory."""
    train_rows, val_rows = split_by_image(resolved.images, options.val_fraction, options.seed)
    checked = _validation_rows(train_rows, val_rows)
    mined = sorted(set(checked) | set(train_rows)) if options.objective == "match" else checked
    swapped = (swap_texts(resolved, options.swaps, options.seed, train_rows)
               if options.objective == "caption" and options.swaps else None)
    progress.start(len(resolved.captions) + len(index) + sum(map(len, (swapped or {}).values())))
    depth = max(100, 4 * options.negatives, options.val_shortlist + 8)
    examples = mine_examples(index, resolved, depth, progress, mined)
    swaps = (encode_swaps(index.encoder, swapped, len(resolved.captions), progress)
             if swapped is not None else None)
    # a caption scorer is told word salad by its prior, which no real text to match has
    text_negatives = (mine_text_negatives(index, resolved, examples, options.text_negatives, options.seed, mined,
                                          swaps=options.objective == "match") if options.text_negatives else None)
    bank = RegionBank.load(regions, examples.image_ids, layout.regions, layout.dim, progress, device)
    progress.close()
    return _TrainingData(examples, text_negatives, swaps, bank, train_rows, val_rows, checked)


def _fusion_config(index: "Index", layout: RegionLayout, options: TrainOptions, examples: Examples) -> FusionConfig:
    encoder = index.encoder
    vocab = _vocabulary(examples) if options.objective == "caption" else ()
    return FusionConfig(text_dim=encoder.text_token_dim, region_dim=layout.dim, grid=layout.grid,
                        prefix=layout.prefix, max_tokens=encoder.context_length, width=options.width,
                        layers=options.layers, region_layers=options.region_layers,
                        heads=options.heads, dropout=options.dropout, score=options.objective,
                        vocab=vocab, head_cutoffs=head_cutoffs(len(vocab) + 1) if vocab else (),
                        word_dim=encoder.word_dim, causal_states=encoder.text_causal)


def _vocabulary(examples: Examples) -> tuple[int, ...]:
    """The token ids the caption head names: the training captions' commonest, commonest first."""
    ids, counts = np.unique(torch.cat(examples.ids).numpy(), return_counts=True)
    return tuple(int(i) for i in ids[np.argsort(-counts, kind="stable")[:MAX_VOCAB]])


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
        # a short warm-up, then a constant rate: with the match objective binding was learnt
        # late (after a plateau of many epochs on the shapes set), and a decaying rate stalled it
        warmup = max(1, self.steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.candidate_rng = np.random.default_rng(options.seed)
        self.order_rng = random.Random(options.seed)
        self.on_plan: Callable[[TrainPlan], None] | None = None
        self.validation_seconds = 0.0
        self.epoch = 0

    def run(self, progress: Progress, on_epoch: Callable[[EpochRecord], None] | None,
            on_plan: Callable[[TrainPlan], None] | None, started: float) -> tuple[list[EpochRecord], EarlyStopping]:
        history: list[EpochRecord] = []
        stopping = EarlyStopping(self.options.patience)
        if on_plan is not None:  # time a validation of the untrained scorer on a sample, for the estimate
            rows = self.data.checked_rows
            sample = rows[:max(1, len(rows) // ESTIMATE_VALIDATION_SHARE)]
            clock = time.perf_counter()
            self.validate(0, math.nan, started, sample)
            self.validation_seconds = (time.perf_counter() - clock) * len(rows) / len(sample)
            self.on_plan = on_plan
        progress.start(self.steps)
        try:
            for epoch in range(1, self.options.epochs + 1):
                self.epoch = epoch
                train_loss = self.train_epoch(progress)
                record = self.validate(epoch, train_loss, started)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                if stopping.should_stop(epoch, -record.val_loss, record.stopping_loss, self.scorer):
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
        clock = time.perf_counter()
        for start in range(0, len(rows), self.options.batch_size):
            loss = self.batch_loss(rows[start:start + self.options.batch_size])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.body, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
            progress.advance(1)
            if self.on_plan is not None and len(losses) == ESTIMATE_STEPS:
                self.on_plan(self.plan((time.perf_counter() - clock) / ESTIMATE_STEPS, rows))
                self.on_plan = None
        return float(np.mean(losses))

    def plan(self, step_seconds: float, rows: list[int]) -> TrainPlan:
        """The run's estimate, from the plain steps timed so far and, when later epochs
        swap words, a few swap steps timed now: their losses and gradients are thrown away
        (the next step zeroes them), so the run goes on as it would have."""
        steps = math.ceil(len(rows) / self.options.batch_size)
        swap_epochs = sum(self._swapping(epoch) for epoch in range(1, self.options.epochs + 1))
        swap_step_seconds = 0.0
        if swap_epochs and self.data.swaps is not None:
            size = self.options.batch_size
            batches = [rows[start:start + size] for start in range(0, len(rows), size)][:ESTIMATE_SWAP_STEPS]
            clock = time.perf_counter()
            with _forked_rng(self.device):  # dropout draws nothing the run would have drawn
                for batch in batches:
                    self.batch_loss(batch, swapping=True).backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            swap_step_seconds = (time.perf_counter() - clock) / len(batches)
            self.optimizer.zero_grad(set_to_none=True)
        return TrainPlan(self.options.epochs, steps, step_seconds, self.validation_seconds, swap_epochs,
                         swap_step_seconds)

    def _swapping(self, epoch: int) -> bool:
        """Whether ``epoch`` contrasts captions with their word swaps (``options.swaps_from``)."""
        options = self.options
        return options.objective == "caption" and bool(options.swaps) and epoch > options.swaps_from * options.epochs

    def batch_loss(self, rows: list[int], swapping: bool | None = None) -> torch.Tensor:
        data = self.data
        if self.options.objective == "caption":
            swapping = self._swapping(self.epoch) if swapping is None else swapping
            return caption_loss(self.scorer, data.examples, rows, data.regions, self.device,
                                data.swaps if swapping else None)
        candidates = sample_candidates(data.examples, rows, self.options.negatives, self.candidate_rng)
        loss = listwise_loss(match_logits(self.scorer, data.examples, rows, candidates, data.regions, self.device))
        if data.text_negatives is not None:
            loss = loss + listwise_loss(text_logits(self.scorer, data.examples, rows, data.text_negatives,
                                                    data.regions, self.device))
        return loss

    def validate(self, epoch: int, train_loss: float, started: float, rows: list[int] | None = None) -> EpochRecord:
        """Fit w and measure the epoch on the validation rows (or ``rows`` of them)."""
        data, rows = self.data, rows or self.data.checked_rows
        images = validate_images(self.scorer, data.examples, rows, self.options.val_shortlist - 1, data.regions,
                                 self.logit_scale, self.device)
        texts = (validate_texts(self.scorer, data.examples, rows, data.text_negatives, data.regions, self.device)
                 if data.text_negatives is not None else None)
        return EpochRecord(epoch=epoch, train_loss=train_loss, **asdict(images), val_text_top1=texts,
                           val_caption_loss=self.held_out_caption_loss(rows),
                           seconds=round(time.perf_counter() - started, 1))

    @torch.no_grad()
    def held_out_caption_loss(self, rows: list[int]) -> float | None:
        """The caption objective's loss on the validation rows (None for the match
        objective). Unlike ``val_loss`` it does not wait for ``w`` to leave 0."""
        if self.options.objective != "caption":
            return None
        self.scorer.eval()
        size = self.options.batch_size
        batches = [rows[start:start + size] for start in range(0, len(rows), size)]
        total = sum(float(caption_loss(self.scorer, self.data.examples, batch, self.data.regions, self.device))
                    * len(batch) for batch in batches)
        return total / max(len(rows), 1)
