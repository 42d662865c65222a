"""Stage 2: rescore a stage-1 shortlist with the fusion scorer.

The scorer's weights live in ``DIR/reranker.pt`` with its config; an index without that
file gets an untrained scorer, whose ``w = 0`` reproduces stage-1 order exactly. One
scoring function serves both directions: one text against K images (search) and K texts
against one image (match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import IndexFormatError, RerankerMismatchError
from ..fusion import FusionConfig, FusionScorer, pad_tokens
from ..store.atomic import atomic_path

CHECKPOINT_FORMAT = 2  # 2: word embeddings beside token states, input norms, positions


@dataclass
class RerankOutput:
    order: np.ndarray  # (K,) positions into the shortlist, best first
    final: np.ndarray  # (K,) final scores, shortlist order
    match_logit: np.ndarray  # (K,)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (K, T, R)


class Reranker:
    """A fusion scorer in eval mode, with what it was trained on."""

    def __init__(self, scorer: FusionScorer, logit_scale: float = 100.0,
                 trained: dict[str, Any] | None = None, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.scorer = scorer.to(self.device).eval()
        self.logit_scale = logit_scale
        self.trained = trained or {}

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
                  device: torch.device | None = None) -> "Reranker":
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            scorer = FusionScorer(config)
        return cls(scorer, logit_scale, None, device)

    @classmethod
    def load(cls, path: Path, device: torch.device | None = None) -> "Reranker":
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            if int(checkpoint.get("format", 0)) > CHECKPOINT_FORMAT:
                raise IndexFormatError(f"{path} is from a newer vtsearch; upgrade vtsearch")
            if int(checkpoint.get("format", 0)) < CHECKPOINT_FORMAT:
                raise IndexFormatError(f"{path} holds an older scorer that this vtsearch cannot run; "
                                       "train it again with vtsearch train-reranker")
            scorer = FusionScorer(FusionConfig.from_dict(checkpoint["config"]))
            scorer.load_state_dict(checkpoint["state_dict"])
        except IndexFormatError:
            raise
        except Exception as error:
            raise IndexFormatError(f"cannot read reranker weights {path}: {error}") from None
        return cls(scorer, float(checkpoint.get("logit_scale", 100.0)), dict(checkpoint.get("trained", {})), device)

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

    def rerank(self, text_tokens: torch.Tensor, stage1: np.ndarray, regions: torch.Tensor,
               need_weights: bool = False) -> RerankOutput:
        """One query text, (T, Dt) token states, against K images' (K, R, Dr) regions."""
        count = len(stage1)
        tokens = text_tokens[None].expand(count, -1, -1)  # (K, T, Dt)
        lengths = torch.full((count,), text_tokens.shape[0], dtype=torch.long)
        return self.score(tokens, lengths, regions, stage1, need_weights)

    def rerank_texts(self, text_tokens: list[torch.Tensor], stage1: np.ndarray,
                     regions: torch.Tensor) -> RerankOutput:
        """K candidate texts, K × (T_i, Dt) token states, against one image's (R, Dr) regions."""
        if not text_tokens:
            return self.score(torch.empty(0), torch.empty(0), regions, stage1)
        tokens, lengths = pad_tokens(text_tokens)  # (K, T_max, Dt), (K,)
        return self.score(tokens, lengths, regions[None].expand(len(text_tokens), -1, -1), stage1)

    @torch.inference_mode()
    def score(
        self,
        tokens: torch.Tensor,  # (K, T, Dt) text token states, padded
        lengths: torch.Tensor,  # (K,) real tokens per row
        regions: torch.Tensor,  # (K, R, Dr) the paired regions
        stage1: np.ndarray,  # (K,) stage-1 similarities of the pairs
        need_weights: bool = False,
    ) -> RerankOutput:
        """Final scores ``stage1 + w · match_logit`` of K (text, image) pairs, and their
        order, best first (ties keep stage-1 order)."""
        if len(stage1) == 0:
            empty = np.empty(0, dtype=np.float32)
            return RerankOutput(np.empty(0, dtype=np.int64), empty, empty)
        if tokens.shape[-1] != self.scorer.config.text_dim or regions.shape[-1] != self.scorer.config.region_dim:
            raise RerankerMismatchError("the reranker was trained for another encoder")
        match_logit, attention = self.scorer(tokens.to(self.device), lengths.to(self.device),
                                             regions.to(self.device), need_weights)
        stage1_tensor = torch.as_tensor(stage1, dtype=torch.float32, device=self.device)
        final = self.scorer.final_scores(stage1_tensor, match_logit).cpu().numpy()
        order = np.argsort(-final, kind="stable")
        return RerankOutput(order, final, match_logit.cpu().numpy(), attention)
