"""The region store: every indexed image's region features, fp16, memory-mapped.

``regions.f16`` is a flat array of rows, one row per stored image, each row
``(grid*grid, dim)`` float16. Rows are appended and fsynced *before* the catalog batch
that references them commits, so a committed catalog row always points at durable
region bytes. A crash between the two leaves unreferenced rows at the end of the file:
harmless, and a torn partial row is cut off on the next append. A re-encoded image gets a
new row; its old row, like a removed image's, stays as unused space until the store is
compacted: the live rows are copied to a new file (``regions.N.f16``), and one catalog
transaction points the rows at it and records its name. Readers read a row number and
the file name in one statement, so they never read a row from the wrong file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import RegionLayout
from ..errors import NeedsRepairError

REGIONS_FILE = "regions.f16"
COPY_CHUNK = 1024  # rows per read/append while compacting


def compacted_name(current: str) -> str:
    """regions.f16 → regions.1.f16 → regions.2.f16 ..."""
    parts = current.split(".")
    generation = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
    return f"regions.{generation + 1}.f16"


class RegionStore:
    """Append-only rows of region features in one memory-mapped file."""

    def __init__(self, path: Path, layout: RegionLayout):
        self.path = path
        self.layout = layout
        self._map: np.memmap | None = None

    def _shape(self, rows: int) -> tuple[int, int, int]:
        return (rows, self.layout.regions, self.layout.dim)

    def __len__(self) -> int:
        try:
            return self.path.stat().st_size // self.layout.row_bytes
        except FileNotFoundError:
            return 0

    def torn_bytes(self) -> int:
        """Bytes past the last whole row (a crash mid-append leaves them)."""
        try:
            return self.path.stat().st_size % self.layout.row_bytes
        except FileNotFoundError:
            return 0

    def cut_torn_tail(self) -> None:
        """Drop bytes past the last whole row (``append`` does this too)."""
        torn = self.torn_bytes()
        if torn:
            with open(self.path, "r+b") as handle:
                handle.truncate(self.path.stat().st_size - torn)
                os.fsync(handle.fileno())

    def append(self, regions: torch.Tensor | np.ndarray) -> list[int]:
        """Append (B, R, D) regions durably; returns their row numbers."""
        values = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else regions
        values = np.ascontiguousarray(values, dtype=self.layout.dtype)
        if values.shape[1:] != self._shape(0)[1:]:
            raise ValueError(f"regions of shape {values.shape[1:]} do not fit layout {self._shape(0)[1:]}")
        with open(self.path, "ab") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size % self.layout.row_bytes:  # a torn row from a crash: cut it off
                size -= size % self.layout.row_bytes
                handle.truncate(size)
                handle.seek(size)
            first = size // self.layout.row_bytes
            handle.write(values.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        return list(range(first, first + len(values)))

    def copy_rows(self, rows: Sequence[int], target: "RegionStore") -> list[int]:
        """Append the given rows, in order, to ``target``; returns their new row numbers."""
        placed: list[int] = []
        for start in range(0, len(rows), COPY_CHUNK):
            placed.extend(target.append(self.read(rows[start:start + COPY_CHUNK])))
        return placed

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """Rows as a (n, R, D) float16 array (a copy)."""
        if len(rows) == 0:
            return np.empty(self._shape(0), dtype=self.layout.dtype)
        needed = max(rows) + 1
        if self._map is None or len(self._map) < needed:
            count = len(self)
            if count < needed:
                raise NeedsRepairError(f"region row {needed - 1} is past the end of {self.path} ({count} rows)")
            self._map = np.memmap(self.path, dtype=self.layout.dtype, mode="r", shape=self._shape(count))
        return np.asarray(self._map[np.asarray(rows, dtype=np.int64)])
