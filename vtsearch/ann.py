"""Stage: ann. The FAISS index over the catalog's embeddings.

Ids are the catalog's primary keys (one id contract). The index is derived data: it can
always be rebuilt from the catalog. It is saved as a CPU index and, when faiss has GPUs,
cloned to the GPU for searching; the CPU copy stays the one that is mutated and saved.
FAISS pads missing results with id ``-1``: :meth:`AnnIndex.search` drops them, here and
nowhere else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

from .atomic import atomic_path
from .config import AnnConfig
from .errors import IndexFormatError

log = logging.getLogger(__name__)

Hits = list[tuple[int, float]]  # (catalog id, similarity), best first


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


class AnnIndex:
    """A FAISS index keyed by catalog ids, with per-call search parameters."""

    def __init__(self, index: faiss.Index, config: AnnConfig, use_gpu: bool = False):
        self.cpu_index = index
        self.config = config
        self.use_gpu = use_gpu and gpu_count() > 0
        self._gpu_index: faiss.Index | None = None

    @classmethod
    def empty(cls, dim: int, config: AnnConfig, use_gpu: bool = False) -> "AnnIndex":
        metric = faiss.METRIC_INNER_PRODUCT if config.metric == "inner_product" else faiss.METRIC_L2
        return cls(faiss.index_factory(dim, config.factory, metric), config, use_gpu)

    @classmethod
    def build(
        cls,
        dim: int,
        config: AnnConfig,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        use_gpu: bool = False,
    ) -> "AnnIndex":
        """Build from (ids, vectors) chunks, e.g. ``Catalog.embeddings(dim)``."""
        ann = cls.empty(dim, config, use_gpu)
        for ids, vectors in chunks:
            ann.add(ids, vectors)
        return ann

    @classmethod
    def load(cls, path: Path, config: AnnConfig, use_gpu: bool = False) -> "AnnIndex":
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexFormatError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        return cls(index, config, use_gpu)

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

    def __len__(self) -> int:
        return int(self.cpu_index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids held (int64), for integrity checks."""
        id_map = faiss.downcast_index(self.cpu_index)
        return faiss.vector_to_array(id_map.id_map).astype(np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        """Stored vectors for ids, when this index type keeps them exactly (else None)."""
        if "Flat" not in self.config.factory or "IDMap2" not in self.config.factory:
            return None
        try:
            return np.stack([self.cpu_index.reconstruct(int(i)) for i in ids])
        except RuntimeError:  # an id the index does not hold
            return None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.cpu_index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu_index = None  # the GPU clone is refreshed before the next search

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        removed = int(self.cpu_index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._gpu_index = None
        return removed

    def _searchable(self) -> faiss.Index:
        if not self.use_gpu:
            return self.cpu_index
        if self._gpu_index is None:
            resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self.cpu_index)
            self._gpu_resources = resources  # must outlive the GPU index
        return self._gpu_index

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: faiss.SearchParameters | None = None,
    ) -> list[Hits]:
        """Top-``k`` (id, similarity) per query row, best first, padding dropped."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        if params is None:
            scores, ids = self._searchable().search(queries, k)
        else:
            scores, ids = self._searchable().search(queries, k, params=params)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i != -1]
            for row_ids, row_scores in zip(ids, scores)
        ]

    def save(self, path: Path) -> None:
        """Write the CPU index atomically."""
        with atomic_path(path) as temp:
            faiss.write_index(self.cpu_index, str(temp))
