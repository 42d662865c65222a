"""Choose, train, fill and calibrate the FAISS index for a collection of a given size.

- Below :data:`IVF_THRESHOLD` vectors: exact inner product (``IDMap2,Flat``). A query
  scans every vector, which on two CPU cores stays within a few milliseconds.
- From there on: ``IVF{nlist},SQ4`` — an inverted file with ``nlist ≈ √n`` lists and
  4-bit scalar-quantized codes (``d/2`` bytes per vector, plus its 8-byte id). It is
  trained on a random sample of the collection, filled in chunks, and then calibrated:
  on queries made from sampled vectors, ``nprobe`` (lists probed) and ``k_factor``
  (candidates re-scored exactly, per result) grow until recall@10 against exact search
  reaches the config's target. The settings and the recall measured are stored with the
  config.

With ``on_disk`` (``vtsearch rebuild --on-disk``) the IVF index is built by
:mod:`vtsearch.store.ondisk` instead: shards added in parallel, their lists merged into a
memory-mapped data file, so neither the build nor a search holds the index in memory.

Why not PQ: 8-bit PQ codes of the same recall take minutes to train (about 2 min for
PQ64 on 40,000 vectors here), and FAISS 1.15's 4-bit PQ fast-scan lists lose vectors
added after a ``remove_ids`` (a re-encoded image is removed and added again), which
incremental updates cannot live with. SQ4 trains in seconds (3.6 s for 1,024 lists on
40,000 vectors here), supports removal, and with exact re-scoring (``k_factor`` 4)
reached 0.999 recall@10 on 100,000 CLIP-like synthetic vectors at ``nprobe`` 8.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..config import AnnConfig, Tuning
from . import ondisk
from .ann import AnnIndex, Refine
from .catalog import Catalog

log = logging.getLogger(__name__)

IVF_THRESHOLD = Tuning.ivf_threshold
TRAIN_POINTS_PER_LIST = 40  # FAISS asks for at least 39 per centroid
MAX_TRAIN_SAMPLE = 250_000
CALIBRATION_QUERIES = 200
CALIBRATION_K = 10
CALIBRATION_MARGIN = 0.02  # aim this far above the target: real queries are not the calibration's
REBUILD_GROWTH = 10  # retrain an auto index after this much growth since training

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # fresh (ids, vectors) chunks


def choose_config(count: int, dim: int, current: AnnConfig | None = None,
                  ivf_threshold: int = IVF_THRESHOLD) -> AnnConfig:
    """The index kind for ``count`` vectors (a non-auto ``current`` is kept as it is)."""
    current = current or AnnConfig()
    if not current.auto:
        return current
    if count < ivf_threshold:
        return dataclasses.replace(current, factory="IDMap2,Flat", nprobe=0, k_factor=1,
                                   trained_on=count, calibrated_recall=None, data_file=None)
    nlist = 2 ** round(math.log2(math.sqrt(count)))
    return dataclasses.replace(current, factory=f"IVF{nlist},SQ4", trained_on=count, data_file=None)


def needs_rebuild(config: AnnConfig, count: int, dim: int, ivf_threshold: int = IVF_THRESHOLD) -> bool:
    """True when an auto index should be rebuilt for ``count`` vectors: it changes kind,
    or an IVF index has grown tenfold since it was trained."""
    if not config.auto:
        return False
    target = choose_config(count, dim, config, ivf_threshold)
    if target.exact != config.exact:
        return True
    return not config.exact and count >= REBUILD_GROWTH * max(config.trained_on, 1)


def nlist_of(config: AnnConfig) -> int:
    return int(config.factory.split(",")[0][3:])


def build(
    dim: int,
    config: AnnConfig,
    count: int,
    chunks: Chunks,
    sample: Callable[[int], np.ndarray],
    refine: Refine,
    use_gpu: bool = False,
    folder: Path | None = None,
) -> AnnIndex:
    """A filled index of the kind ``config`` names (IVF: trained and calibrated).

    ``chunks()`` yields every (ids, vectors) chunk; ``sample(m)`` returns ``m`` random
    vectors; ``refine(ids)`` returns exact vectors by id. An ``on_disk`` IVF index writes
    its list data into ``folder``.
    """
    started = time.perf_counter()
    ann = AnnIndex.empty(dim, config, use_gpu)
    ann.refine = refine
    if not ann.is_trained:
        if count == 0:
            return ann  # trained once there are vectors
        points = min(count, MAX_TRAIN_SAMPLE, max(TRAIN_POINTS_PER_LIST * nlist_of(config), 10_000))
        if config.on_disk and folder is not None:
            index, config, _timings = ondisk.build(folder, dim, config, chunks, sample(points))
            ann = AnnIndex(index, config, use_gpu, writable=False)
            ann.refine = refine
            ann.config = calibrate(ann, chunks, sample)
            log.info("built %s on disk over %d vectors in %.1f s", config.factory, len(ann),
                     time.perf_counter() - started)
            return ann
        ann.train(sample(points))
    for ids, vectors in chunks():
        ann.add(ids, vectors)
    if not config.exact:
        ann.config = calibrate(ann, chunks, sample)
    log.info("built %s over %d vectors in %.1f s", ann.config.factory, len(ann), time.perf_counter() - started)
    return ann


def build_from_catalog(catalog: Catalog, dim: int, config: AnnConfig, use_gpu: bool = False,
                       folder: Path | None = None) -> AnnIndex:
    """:func:`build` over a catalog's indexed embeddings: the sample is drawn from them,
    exact re-scoring reads them back by id."""
    ids = catalog.indexed_ids()

    def sample(count: int) -> np.ndarray:
        chosen = np.random.default_rng(len(ids)).choice(ids, size=min(count, len(ids)), replace=False)
        return catalog.vectors(np.sort(chosen).tolist(), dim)

    return build(dim, config, len(ids), lambda: catalog.embeddings(dim), sample,
                 lambda wanted: catalog.vectors(wanted, dim), use_gpu, folder)


def calibration_queries(sample: Callable[[int], np.ndarray], count: int, seed: int = 0) -> np.ndarray:
    """Queries near the data but not on it: sampled vectors plus noise of equal size, so
    each query's neighbours are not simply itself."""
    rng = np.random.default_rng(seed)
    base = sample(count)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise *= np.linalg.norm(base, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = base + noise * 0.75
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def exact_top(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Brute-force top-``k`` ids per query over all chunks (the ground truth)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in chunks:
        scores = queries @ vectors.T
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_ids = np.take_along_axis(merged_ids, top, axis=1)
    return best_ids


def recall_at_k(found: list[list[tuple[int, float]]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len({i for i, _ in hits[:k]} & set(row.tolist())) / k
                          for hits, row in zip(found, truth)]))


def calibrate(ann: AnnIndex, chunks: Chunks, sample: Callable[[int], np.ndarray]) -> AnnConfig:
    """The cheapest (k_factor, nprobe) whose recall@10 clears the target by a margin;
    failing that the cheapest that reaches the target, or else the best there is."""
    queries = calibration_queries(sample, CALIBRATION_QUERIES)
    truth = exact_top(queries, chunks(), CALIBRATION_K)
    nlist = nlist_of(ann.config)
    target = ann.config.recall_target
    reached, best = None, None
    for k_factor in (4, 8, 16):
        nprobe = 1
        while nprobe <= nlist:
            trial = dataclasses.replace(ann.config, nprobe=nprobe, k_factor=k_factor)
            ann.config = trial
            recall = recall_at_k(ann.search(queries, CALIBRATION_K), truth)
            measured = dataclasses.replace(trial, calibrated_recall=round(recall, 4))
            if recall >= min(target + CALIBRATION_MARGIN, 1.0):
                return measured
            if recall >= target and reached is None:
                reached = measured
            if best is None or recall > best.calibrated_recall:
                best = measured
            nprobe *= 2
    if reached is not None:
        return reached
    log.warning("the %s index reaches recall@10 %.3f at most, below the target %.2f",
                best.factory, best.calibrated_recall, target)
    return best
