"""An IVF index built from shards whose inverted lists are merged on disk.

For collections whose FAISS index should not have to fit in memory (the way the public
LAION-5B index was served): the coarse quantizer is trained once on a sample; the
vectors are added, in parallel, into separate IVF indexes of at most ``shard_size``
vectors each, every shard written to its own file as soon as it is full; then FAISS
merges the shards' inverted lists into one ``ann-<token>.ivfdata`` file
(``OnDiskInvertedLists``), read through ``mmap``. The build holds at most ``jobs`` shards
and ``jobs`` chunks of vectors in memory at a time, whatever the collection's size;
searches page in only the lists they probe.

``ann.faiss`` then holds the quantizer and a reference to the data file, which it finds
beside itself (``IO_FLAG_ONDISK_SAME_DIR``), so the index folder can move. A data file
is never changed once written: a later build writes a new one under a new name, and
readers keep the file they mapped until they reload.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from ..config import AnnConfig

log = logging.getLogger(__name__)

DATA_PREFIX, DATA_SUFFIX = "ann-", ".ivfdata"
DEFAULT_SHARD_SIZE = 200_000
DEFAULT_JOBS = 2


def data_files(folder: Path) -> list[Path]:
    """Every merged data file in ``folder`` (the current one and any left-overs)."""
    return sorted(folder.glob(f"{DATA_PREFIX}*{DATA_SUFFIX}"))


@dataclass
class _Slot:
    """One worker's shard in progress: vectors go in until it holds ``shard_size``."""

    trained: faiss.Index
    folder: Path
    shard_size: int
    written: list[Path] = field(default_factory=list)
    current: faiss.Index | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    pending: Future | None = None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.current is None:
            self.current = faiss.clone_index(self.trained)
        self.current.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                  np.ascontiguousarray(ids, dtype=np.int64))
        if self.current.ntotal >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.current is None or self.current.ntotal == 0:
            return
        path = self.folder / f"shard-{uuid.uuid4().hex}.faiss"
        faiss.write_index(self.current, str(path))
        self.written.append(path)
        self.current = None  # the shard's lists leave memory


def add_shards(
    trained: faiss.Index,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    folder: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    jobs: int = DEFAULT_JOBS,
) -> list[Path]:
    """Add (ids, vectors) chunks to ``jobs`` shards at a time (round robin, one thread
    each: FAISS releases the GIL); returns the shard files, each at most ``shard_size``
    vectors. At most one chunk per worker waits in memory."""
    slots = [_Slot(trained, folder, shard_size) for _ in range(max(1, jobs))]
    try:
        for number, (ids, vectors) in enumerate(chunks):
            slot = slots[number % len(slots)]
            if slot.pending is not None:
                slot.pending.result()
            slot.pending = slot.executor.submit(slot.add, ids, vectors)
        for slot in slots:
            if slot.pending is not None:
                slot.pending.result()
            slot.executor.submit(slot.flush).result()
    finally:
        for slot in slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
    return [path for slot in slots for path in slot.written]


def merge(trained: faiss.Index, shards: list[Path], folder: Path) -> tuple[faiss.Index, str]:
    """Merge the shards' inverted lists into a new data file in ``folder``; returns the
    searchable index (lists memory-mapped) and the data file's name."""
    name = f"{DATA_PREFIX}{uuid.uuid4().hex[:12]}{DATA_SUFFIX}"
    index = faiss.clone_index(trained)
    merge_ondisk(index, [str(path) for path in shards], str(folder / name))
    return index, name


def build(
    folder: Path,
    dim: int,
    config: AnnConfig,
    chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    sample: np.ndarray,
    shard_size: int = DEFAULT_SHARD_SIZE,
    jobs: int = DEFAULT_JOBS,
) -> tuple[faiss.Index, AnnConfig, dict[str, float]]:
    """Train on ``sample``, add ``chunks()`` in shards, merge them into ``folder``.
    Returns the index, its config (``on_disk``, the data file's name) and the seconds
    each step took."""
    metric = faiss.METRIC_INNER_PRODUCT if config.metric == "inner_product" else faiss.METRIC_L2
    timings: dict[str, float] = {}
    started = time.perf_counter()
    trained = faiss.index_factory(dim, config.factory, metric)
    trained.train(np.ascontiguousarray(sample, dtype=np.float32))
    timings["train_s"] = time.perf_counter() - started
    work = Path(tempfile.mkdtemp(prefix=".shards-", dir=folder))
    try:
        started = time.perf_counter()
        shards = add_shards(trained, chunks(), work, shard_size, jobs)
        timings["add_s"] = time.perf_counter() - started
        started = time.perf_counter()
        index, name = merge(trained, shards, folder)
        timings["merge_s"] = time.perf_counter() - started
        timings["shards"] = len(shards)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("merged %d shards of %s (%d vectors) into %s", timings["shards"], config.factory,
             index.ntotal, name)
    return index, replace(config, on_disk=True, data_file=name), timings
