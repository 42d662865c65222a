"""Stage: ann. The FAISS index over the catalog's embeddings.

Ids are the catalog's primary keys (one id contract). The index is derived data: it can
always be rebuilt from the catalog. Two kinds (chosen by :mod:`vtsearch.store.annbuild`):

- exact (``IDMap2,Flat``) for small collections;
- IVF with 4-bit scalar-quantized codes for large ones. Its shortlist is re-scored
  exactly with the catalog's float vectors (``refine``), ``k_factor`` candidates per
  result, so the codes can be small (d/2 bytes) without losing recall.

Search settings (``nprobe``, an id selector for filtered search) are passed per call as
FAISS search parameters; the shared index is never mutated to search. Readers open large
indexes memory-mapped, so a process does not read the whole file at start; writers load
them into memory. The index is saved as a CPU index and, when faiss has GPUs, cloned to
the GPU for searching where FAISS supports the kind. FAISS pads missing results with id
``-1``: :meth:`AnnIndex.search` drops them, here and nowhere else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from ..config import AnnConfig
from ..errors import IndexFormatError
from .atomic import atomic_path

log = logging.getLogger(__name__)

Hits = list[tuple[int, float]]  # (catalog id, similarity), best first
Refine = Callable[[list[int]], np.ndarray]  # ids → their exact vectors (n, d) float32
MAX_REFINE_EXTRA = 400  # at most this many extra candidates re-scored per query


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


class AnnIndex:
    """A FAISS index keyed by catalog ids, with per-call search parameters."""

    def __init__(self, index: faiss.Index, config: AnnConfig, use_gpu: bool = False,
                 writable: bool = True):
        self.cpu_index = index
        self.config = config
        self.use_gpu = use_gpu and gpu_count() > 0
        self.writable = writable  # False: memory-mapped read-only
        self.refine: Refine | None = None
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
        """Build an exact index from (ids, vectors) chunks, e.g. ``Catalog.embeddings(dim)``."""
        ann = cls.empty(dim, config, use_gpu)
        for ids, vectors in chunks:
            ann.add(ids, vectors)
        return ann

    @classmethod
    def load(cls, path: Path, config: AnnConfig, use_gpu: bool = False, mmap: bool = False) -> "AnnIndex":
        """Read ``path``; ``mmap``: map an IVF index read-only instead of reading it all."""
        on_disk = config.on_disk and not config.exact
        mapped = mmap and not config.exact and not on_disk
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else 0
        if on_disk:  # its lists live in a data file beside it, mapped, never changed
            flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
            if not config.data_file or not (path.parent / config.data_file).is_file():
                raise IndexFormatError(f"cannot read {path}: its list data {config.data_file} is missing")
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise IndexFormatError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        return cls(index, config, use_gpu, writable=not mapped and not on_disk)

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

    @property
    def is_trained(self) -> bool:
        return bool(self.cpu_index.is_trained)

    def __len__(self) -> int:
        return int(self.cpu_index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids held (int64), for integrity checks."""
        index = faiss.downcast_index(self.cpu_index)
        if hasattr(index, "id_map"):
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(self.cpu_index).invlists
        parts = []
        for list_no in range(invlists.nlist):
            size = invlists.list_size(list_no)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        """Stored vectors for ids, when this index type keeps them exactly (else None)."""
        if "Flat" not in self.config.factory or "IDMap2" not in self.config.factory:
            return None
        try:
            return np.stack([self.cpu_index.reconstruct(int(i)) for i in ids])
        except RuntimeError:  # an id the index does not hold
            return None

    def train(self, sample: np.ndarray) -> None:
        self.cpu_index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def _check_writable(self) -> None:
        if not self.writable:
            raise RuntimeError(f"this {self.config.factory} index is read-only (memory-mapped)")

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._check_writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.cpu_index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu_index = None  # the GPU clone is refreshed before the next search

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        self._check_writable()
        removed = int(self.cpu_index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._gpu_index = None
        return removed

    def _searchable(self) -> faiss.Index:
        if not self.use_gpu:
            return self.cpu_index
        if self._gpu_index is None:
            resources = faiss.StandardGpuResources()
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self.cpu_index)
            except RuntimeError as error:  # a kind FAISS has no GPU version of
                log.info("searching %s on the CPU: %s", self.config.factory, str(error).splitlines()[0])
                self.use_gpu = False
                return self.cpu_index
            self._gpu_resources = resources  # must outlive the GPU index
        return self._gpu_index

    def search(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None = None,
        nprobe: int | None = None,
    ) -> list[Hits]:
        """Top-``k`` (id, similarity) per query row, best first, padding dropped.

        ``selector`` restricts the search to some ids (filtered search); ``nprobe``
        overrides the calibrated number of IVF lists probed, for this call only.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        if self.config.exact:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            fetch = k
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.config.nprobe or 1)
            if selector is not None:
                params.sel = selector
            refine = self.refine is not None and self.config.k_factor > 1
            fetch = min(len(self), k + min(k * (self.config.k_factor - 1), MAX_REFINE_EXTRA)) if refine else k
        index = self._searchable() if selector is None else self.cpu_index
        scores, ids = index.search(queries, fetch, params=params) if params else index.search(queries, fetch)
        hits = [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i != -1]
            for row_ids, row_scores in zip(ids, scores)
        ]
        if fetch > k:
            hits = [self._rescore(query, row, k) for query, row in zip(queries, hits)]
        return hits

    def _rescore(self, query: np.ndarray, hits: Hits, k: int) -> Hits:
        """Re-score approximate hits with the exact vectors; keep the best ``k``."""
        ids = [image_id for image_id, _ in hits]
        if not ids:
            return hits
        scores = self.refine(ids) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in order]

    def save(self, path: Path) -> None:
        """Write the CPU index atomically."""
        with atomic_path(path) as temp:
            faiss.write_index(self.cpu_index, str(temp))
