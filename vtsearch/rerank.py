"""Stage: rerank. Rescore a stage-1 shortlist with the fusion scorer.

The scorer's weights live in ``DIR/reranker.pt`` with its config; an index without that
file gets an untrained scorer, whose ``w = 0`` reproduces stage-1 order exactly.
Region features come from the region store, or, for a ``--no-regions`` index, are
computed for the shortlist from the image files at query time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from .atomic import atomic_path
from .catalog import Catalog
from .decode import decode_file
from .encode import Encoder
from .errors import IndexFormatError, VtsearchError
from .fusion import FusionConfig, FusionScorer, pad_tokens
from .records import DecodedImage, ScannedFile
from .regions import REGIONS_FILE, RegionLayout, RegionStore

RERANKER_FILE = "reranker.pt"
CHECKPOINT_FORMAT = 2  # 2: word embeddings beside token states, input norms, positions


class RegionSource(Protocol):
    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        """(n, R, D) float32 region features for catalog ids, in order."""


class StoredRegions:
    """Regions read from the memory-mapped store (following it when it is compacted)."""

    def __init__(self, store: RegionStore, catalog: Catalog):
        self.store = store
        self.catalog = catalog

    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        name, rows = self.catalog.region_locations(ids, default=REGIONS_FILE)
        missing = [image_id for image_id in ids if rows.get(image_id) is None]
        if missing:
            raise IndexFormatError(
                f"{len(missing)} images have no stored regions (e.g. id {missing[0]}); "
                "run vtsearch check --repair"
            )
        if name != self.store.path.name:  # compacted since this reader looked
            self.store = RegionStore(self.store.path.with_name(name), self.store.layout)
        try:
            values = self.store.read([rows[i] for i in ids])
        except FileNotFoundError:  # compacted between the lookup and the read: look again
            return self.regions(ids)
        return torch.from_numpy(values.astype(np.float32))


class ComputedRegions:
    """Regions computed from the image files when the index does not store them."""

    def __init__(self, encoder: Encoder, catalog: Catalog, layout: RegionLayout, batch_size: int = 32):
        self.encoder = encoder
        self.catalog = catalog
        self.layout = layout
        self.batch_size = batch_size
        self.config = encoder.decode_config()

    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        rows = self.catalog.rows(ids)
        result = torch.zeros(len(ids), self.layout.regions, self.layout.dim)
        for start in range(0, len(ids), self.batch_size):
            chunk = list(ids[start:start + self.batch_size])
            pixels, places = [], []
            for offset, image_id in enumerate(chunk):
                outcome = decode_file(ScannedFile(rows[image_id].path, 0, 0), self.config, self.encoder.preprocess)
                if isinstance(outcome, DecodedImage):  # a vanished file keeps zero regions
                    pixels.append(outcome.pixels)
                    places.append(start + offset)
            if pixels:
                features = self.encoder.encode_image_features(torch.stack(pixels), self.layout.grid)
                result[places] = features.regions
        return result


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

    @torch.inference_mode()
    def rerank_texts(
        self,
        text_tokens: list[torch.Tensor],  # K × (T_i, Dt) the candidate texts' token states
        stage1: np.ndarray,  # (K,) stage-1 similarities of the candidates
        regions: torch.Tensor,  # (R, Dr) the one image's regions
    ) -> RerankOutput:
        """Rescore K candidate texts for one image (image → text matching)."""
        count = len(stage1)
        if count == 0:
            empty = np.empty(0, dtype=np.float32)
            return RerankOutput(np.empty(0, dtype=np.int64), empty, empty)
        tokens, lengths = pad_tokens(text_tokens)
        match_logit, attention = self.scorer(tokens.to(self.device), lengths.to(self.device),
                                             regions.to(self.device)[None].expand(count, -1, -1))
        stage1_tensor = torch.as_tensor(stage1, dtype=torch.float32, device=self.device)
        final = self.scorer.final_scores(stage1_tensor, match_logit).cpu().numpy()
        order = np.argsort(-final, kind="stable")
        return RerankOutput(order, final, match_logit.cpu().numpy(), attention)

    @torch.inference_mode()
    def rerank(
        self,
        text_tokens: torch.Tensor,  # (T, Dt) one query's token states
        stage1: np.ndarray,  # (K,) stage-1 similarities of the shortlist
        regions: torch.Tensor,  # (K, R, Dr) the shortlist's regions
        need_weights: bool = False,
    ) -> RerankOutput:
        count = len(stage1)
        if count == 0:
            empty = np.empty(0, dtype=np.float32)
            return RerankOutput(np.empty(0, dtype=np.int64), empty, empty)
        if text_tokens.shape[-1] != self.scorer.config.text_dim or regions.shape[-1] != self.scorer.config.region_dim:
            raise VtsearchError("the reranker was trained for another encoder; retrain it with vtsearch train-reranker")
        tokens = text_tokens.to(self.device)[None].expand(count, -1, -1)  # (K, T, Dt)
        lengths = torch.full((count,), text_tokens.shape[0], dtype=torch.long, device=self.device)
        match_logit, attention = self.scorer(tokens, lengths, regions.to(self.device), need_weights)
        stage1_tensor = torch.as_tensor(stage1, dtype=torch.float32, device=self.device)
        final = self.scorer.final_scores(stage1_tensor, match_logit).cpu().numpy()
        order = np.argsort(-final, kind="stable")  # ties keep stage-1 order
        return RerankOutput(order, final, match_logit.cpu().numpy(), attention)
