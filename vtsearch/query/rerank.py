"""Stage 2: rescore a stage-1 shortlist.

Two scorers answer the same questions (:class:`Stage2`): the fusion scorer here, whose
weights live in ``DIR/reranker.pt`` with its config (an index without that file gets an
untrained scorer, whose ``w = 0`` reproduces stage-1 order exactly), and, for an index
built with a CoCa model, CoCa's own pretrained text decoder
(:class:`vtsearch.query.decoder.DecoderReranker`). One scoring function serves both
directions: one text against K images (search) and K texts against one image (match).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import IndexFormatError, RerankerMismatchError
from ..fusion import FusionConfig, FusionScorer, ReadImages, TextBatch
from ..store.atomic import atomic_path
from ..store.layout import bytes_digest

CHECKPOINT_FORMAT = 4  # 4: the vocabulary commonest first, an adaptive caption head for a large one;
#                        3: causal blocks and the caption head; 2: word embeddings, input norms, positions
OLDEST_FORMAT = 2  # a format-2 scorer (match head, two-way self-attention) still runs


DEFAULT_SHORTLIST = 100  # stage-1 candidates a query reranks unless told otherwise


@dataclass
class RerankOutput:
    order: np.ndarray  # (K,) positions into the shortlist, best first
    final: np.ndarray  # (K,) final scores, shortlist order
    match_logit: np.ndarray  # (K,)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (K, T, R) over the grid

    @classmethod
    def empty(cls) -> "RerankOutput":
        """The output for an empty shortlist."""
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32))


class Stage2(Protocol):
    """What a query asks of a stage-2 scorer, whichever it is."""

    scorer_name: str  # as the manifest names it: "fusion", "coca-decoder"

    @property
    def default_shortlist(self) -> int: ...  # recall_k when a query gives none

    @property
    def is_trained(self) -> bool: ...  # trained by the user (train-reranker)

    @property
    def changes_order(self) -> bool: ...

    # ``hidden``: the text tower's states before its final norm (``TextFeatures.hidden``),
    # which a CoCa decoder reads instead of running the tower again; other scorers ignore it
    def rerank(self, states: torch.Tensor, ids: torch.Tensor, stage1: np.ndarray, regions: torch.Tensor,
               need_weights: bool = False, hidden: torch.Tensor | None = None) -> RerankOutput: ...

    def rerank_texts(self, states: list[torch.Tensor], ids: list[torch.Tensor], stage1: np.ndarray,
                     regions: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> RerankOutput: ...


class Reranker:
    """A fusion scorer in eval mode, with what it was trained on.

    ``precision`` is how it computes at query time: ``fp32``, or ``bf16`` (the index's
    encoder computes in bfloat16: the scorer's matrix products then do too, under
    autocast, while its weights and the caption head's log-softmax stay float32).
    Training always computes in float32."""

    scorer_name = "fusion"
    default_shortlist = DEFAULT_SHORTLIST

    def __init__(self, scorer: FusionScorer, logit_scale: float = 100.0,
                 trained: dict[str, Any] | None = None, device: torch.device | None = None,
                 precision: str = "fp32"):
        self.device = device or torch.device("cpu")
        self.scorer = scorer.to(self.device).eval()
        self.logit_scale = logit_scale
        self.trained = trained or {}
        self.precision = precision
        self.digest: str | None = None  # of the checkpoint file it was loaded from or saved to

    @property
    def is_trained(self) -> bool:
        return bool(self.trained)

    @property
    def changes_order(self) -> bool:
        """False when ``w`` is 0 (untrained, or training found no gain): the final scores
        then equal stage 1 exactly, so a query need not run the scorer at all."""
        return float(self.scorer.rerank_weight.detach()) != 0.0

    @classmethod
    def untrained(cls, config: FusionConfig, logit_scale: float = 100.0, seed: int = 0,
                  device: torch.device | None = None, precision: str = "fp32") -> "Reranker":
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            scorer = FusionScorer(config)
        return cls(scorer, logit_scale, None, device, precision)

    @classmethod
    def load(cls, path: Path, device: torch.device | None = None, precision: str = "fp32",
             data: bytes | None = None) -> "Reranker":
        """The scorer in ``path`` (or in ``data``, its bytes when already read)."""
        try:
            if data is None:
                data = path.read_bytes()  # hashed and loaded from the same bytes: a writer may replace the file
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            version = int(checkpoint.get("format", 0))
            if version > CHECKPOINT_FORMAT:
                raise IndexFormatError(f"{path} is from a newer vtsearch; upgrade vtsearch")
            if version < OLDEST_FORMAT:
                raise IndexFormatError(f"{path} holds an older scorer that this vtsearch cannot run; "
                                       "train it again with vtsearch train-reranker")
            config = dict(checkpoint["config"])
            if version == 2:
                config.update(score="match", causal=False)
            scorer = FusionScorer(FusionConfig.from_dict(config))
            scorer.load_state_dict(checkpoint["state_dict"])
        except IndexFormatError:
            raise
        except Exception as error:
            raise IndexFormatError(f"cannot read reranker weights {path}: {error}") from None
        reranker = cls(scorer, float(checkpoint.get("logit_scale", 100.0)), dict(checkpoint.get("trained", {})),
                       device, precision)
        reranker.digest = bytes_digest(data)
        return reranker

    def save(self, path: Path) -> None:
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": self.scorer.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.scorer.state_dict().items()},
            "logit_scale": self.logit_scale,
            "trained": self.trained,
        }
        with atomic_path(path) as temp:
            torch.save(checkpoint, temp)
            self.digest = bytes_digest(temp.read_bytes())

    @property
    def read_width(self) -> int:
        """Width of an image as the text blocks read it (``read_images``)."""
        return self.scorer.config.width

    @torch.inference_mode()
    def read_images(self, regions: torch.Tensor) -> ReadImages:
        """(K, P+R, Dr) regions → K images as the text blocks read them, on the CPU, in
        float32 whatever ``precision`` (what an index keeps beside a trained scorer)."""
        self._check_regions(regions)
        return ReadImages(self.scorer.read_image(regions.to(self.device)).float().cpu())

    def rerank(self, states: torch.Tensor, ids: torch.Tensor, stage1: np.ndarray,
               regions: torch.Tensor | ReadImages, need_weights: bool = False,
               hidden: torch.Tensor | None = None) -> RerankOutput:
        """One query text, (T, Dt) token states and (T,) ids, against K images' (K, P+R, Dr)
        regions (or the images as already read: ``read_images``); ``hidden`` is not read."""
        text = TextBatch.pad([states], [ids])
        return self.score(text.expand(len(stage1)), regions, stage1, need_weights, prior=self._prior(text))

    def rerank_texts(self, states: list[torch.Tensor], ids: list[torch.Tensor], stage1: np.ndarray,
                     regions: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> RerankOutput:
        """K candidate texts, K × (T_i, Dt) token states and ids, against one image's (P+R, Dr)
        regions; ``hidden`` is not read."""
        if not states:
            return self.score(None, regions, stage1)
        return self.score(TextBatch.pad(states, ids), regions[None].expand(len(states), -1, -1), stage1,
                          weight=self.text_weight)

    @property
    def text_weight(self) -> float:
        """The weight ``rerank_texts`` gives the match logit: fitted for ranking texts by
        ``train-reranker`` (``validate.fit_text_weight``); a scorer trained before that was
        fitted ranks texts with ``w``, as it did."""
        fitted = self.trained.get("val", {}).get("text_w")
        return float(self.scorer.rerank_weight.detach()) if fitted is None else float(fitted)

    @torch.inference_mode()
    def _prior(self, text: TextBatch) -> torch.Tensor | None:
        """log p(text | no image) of a one-text batch, for a caption scorer: the same for
        every candidate image, so it is computed once."""
        if self.scorer.config.score != "caption":
            return None
        with self._autocast():
            return self.scorer.text_log_likelihood(text.to(self.device), None).float()

    def _check_regions(self, regions: torch.Tensor) -> None:
        config = self.scorer.config
        if regions.shape[-1] != config.region_dim:
            raise RerankerMismatchError("the reranker was trained for another encoder")
        if regions.shape[1] != config.prefix + config.grid ** 2:
            raise RerankerMismatchError(f"the reranker reads {config.prefix} + {config.grid}x{config.grid} regions "
                                        f"an image, not {regions.shape[1]}: it was trained on another index")

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.inference_mode()
    def score(
        self,
        texts: TextBatch | None,  # K padded texts
        regions: torch.Tensor | ReadImages,  # (K, P+R, Dr) the paired regions, or the images already read
        stage1: np.ndarray,  # (K,) stage-1 similarities of the pairs
        need_weights: bool = False,
        prior: torch.Tensor | None = None,  # (1,) or (K,) log p(text | no image), when already known
        weight: float | None = None,  # of the match logit, instead of the scorer's w
    ) -> RerankOutput:
        """Final scores ``stage1 + w · match_logit`` of K (text, image) pairs, and their
        order, best first (ties keep stage-1 order)."""
        if texts is None or len(stage1) == 0:
            return RerankOutput.empty()
        config = self.scorer.config
        if texts.states.shape[-1] != config.text_dim:
            raise RerankerMismatchError("the reranker was trained for another encoder")
        if not isinstance(regions, ReadImages):
            self._check_regions(regions)
        with self._autocast():
            match_logit, attention = self.scorer(texts.to(self.device), regions.to(self.device), need_weights, prior)
        match_logit, attention = match_logit.float(), [weights.float() for weights in attention]
        stage1_tensor = torch.as_tensor(stage1, dtype=torch.float32, device=self.device)
        final = self.scorer.final_scores(stage1_tensor, match_logit, weight).cpu().numpy()
        order = np.argsort(-final, kind="stable")
        grid_attention = [weights[..., config.prefix:] for weights in attention]  # the prefix is no place
        return RerankOutput(order, final, match_logit.cpu().numpy(), grid_attention)
