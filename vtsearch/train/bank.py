"""The index's regions held in memory for a training run.

A step reads the regions of a few dozen to a few hundred images; read from the
memory-mapped store each time, that read (a catalog lookup, a gather, fp16 → fp32) was
most of an epoch. When they fit in ``MEMORY_BUDGET``, every image's regions are read
once before the first epoch and kept as fp16 (on the GPU when training runs there); a
batch is then a single indexing of one tensor.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..progress import Progress
from ..query.sources import RegionSource

MEMORY_BUDGET = 4 << 30  # bytes of fp16 regions a run may hold in memory
READ_BATCH = 2048  # images per read from the store


class RegionBank:
    """Every indexed image's regions, in memory, looked up by catalog id."""

    def __init__(self, image_ids: np.ndarray, regions: torch.Tensor):
        self.image_ids = image_ids  # (M,) sorted
        self.values = regions  # (M, R, D) fp16

    @classmethod
    def load(cls, source: RegionSource, image_ids: np.ndarray, regions: int, dim: int, progress: Progress,
             device: torch.device = torch.device("cpu")) -> RegionSource:
        """The bank of ``image_ids`` (sorted) on ``device`` when it fits the memory budget;
        else ``source`` itself."""
        if len(image_ids) * regions * dim * 2 > MEMORY_BUDGET:
            return source
        values = torch.empty(len(image_ids), regions, dim, dtype=torch.float16)
        for start in range(0, len(image_ids), READ_BATCH):
            chunk = image_ids[start:start + READ_BATCH]
            values[start:start + len(chunk)] = source.regions(chunk.tolist()).to(torch.float16)
            progress.advance(len(chunk))
        return cls(image_ids, values.to(device))

    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        """(n, R, D) float32 regions of catalog ids, in order, where the bank is."""
        rows = torch.from_numpy(np.searchsorted(self.image_ids, np.asarray(ids, dtype=np.int64)))
        return self.values[rows.to(self.values.device)].float()
