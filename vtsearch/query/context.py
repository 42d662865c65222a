"""What a query reads: the index's parts as one query sees them.

The encoder, the reranker and the region source are loaded on first use (a query by
vector needs none of them), so they are given as functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import RegionLayout
from ..encoder import Encoder
from ..store.ann import AnnIndex
from ..store.catalog import Catalog
from .readcache import ReadCache
from .rerank import DEFAULT_SHORTLIST, Stage2
from .sources import RegionSource


@dataclass(frozen=True)
class QueryContext:
    catalog: Catalog
    ann: AnnIndex
    embed_dim: int
    layout: RegionLayout | None  # None: no regions, so no stage 2
    exact_filter_limit: int
    load_encoder: Callable[[], Encoder]
    load_reranker: Callable[[], Stage2 | None]
    load_region_source: Callable[[], RegionSource | None]
    load_read_cache: Callable[[], ReadCache | None] = lambda: None  # a search's shortlist, as the scorer reads it

    @property
    def encoder(self) -> Encoder:
        return self.load_encoder()

    def shortlist(self, recall_k: int | None, reranked: bool) -> int:
        """``recall_k``, or when None the default of the scorer that will rerank (a CoCa
        decoder's is small on a CPU: ViT-B-32's costs 7-18 ms per candidate there)."""
        if recall_k is not None:
            return recall_k
        reranker = self.load_reranker() if reranked and self.layout is not None else None
        return reranker.default_shortlist if reranker is not None else DEFAULT_SHORTLIST

    def scorer(self, wanted: bool) -> tuple[Stage2, RegionSource] | None:
        """The reranker and its regions when reranking is ``wanted`` and would change the
        order (``w != 0``); None when stage-1 order stands."""
        reranker = self.load_reranker() if wanted else None
        if reranker is None or not reranker.changes_order:
            return None
        return reranker, self.load_region_source()
