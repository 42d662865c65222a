"""Upkeep of the region store's files: follow the file the catalog names, compact it when
much of it is unused, and delete files a killed run left behind."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..config import RegionLayout
from .annsync import AnnSync
from .catalog import Catalog
from .layout import READ_PREFIX, READ_SUFFIX, read_layout
from .regions import REGIONS_FILE, RegionStore, compacted_name

log = logging.getLogger(__name__)

COMPACT_WHEN_UNUSED = 0.25  # compact the region store when more of it than this is unused


class RegionFiles:
    """The region store of one index folder (``store`` is None when regions are not kept).
    ``read_width`` says how wide a row of the trained scorer's read-image files is (None
    without one), so a compaction can carry those rows along."""

    def __init__(self, folder: Path, catalog: Catalog, layout: RegionLayout | None,
                 read_width: Callable[[], int | None] = lambda: None):
        self.folder = folder
        self.catalog = catalog
        self.read_width = read_width
        stored = layout is not None and layout.stored
        self.store = RegionStore(folder / catalog.regions_file(REGIONS_FILE), layout) if stored else None

    def sync(self) -> None:
        """Follow the region file the catalog names (another process may have compacted)."""
        if self.store is not None:
            name = self.catalog.regions_file(REGIONS_FILE)
            if name != self.store.path.name:
                self.store = RegionStore(self.folder / name, self.store.layout)

    def compact_if_sparse(self, ann: AnnSync) -> None:
        store = self.store
        if store is not None and len(store) > 0:
            if len(store) - self.catalog.count_region_rows() > len(store) * COMPACT_WHEN_UNUSED:
                self.compact(ann)

    def compact(self, ann: AnnSync) -> int:
        """Copy the live rows to a new file and drop the old one (lock held); returns the
        rows dropped. Searches keep reading the old file until the catalog names the new."""
        old = self.store
        if old is None:
            return 0
        live = self.catalog.live_region_rows()
        if live and live[-1][1] >= len(old):
            log.warning("some images point past the end of %s; not compacting it "
                        "(vtsearch check --repair fixes this)", old.path)
            return 0
        new = RegionStore(old.path.with_name(compacted_name(old.path.name)), old.layout)
        new.path.unlink(missing_ok=True)  # a compaction killed before its commit left it
        placed = old.copy_rows([row for _id, row in live], new)
        new.path.touch()  # exists even when nothing is live
        self._carry_reads(old, new, [row for _id, row in live])
        ann_was_current = ann.is_current()
        self.catalog.relocate_regions({row_id: row for (row_id, _old), row in zip(live, placed)}, new.path.name)
        if ann_was_current:  # FAISS holds the same vectors: it stays current
            ann.mark_current()
        self.store = new
        dropped = len(old) - len(live)
        self.remove_stale()
        log.info("compacted the region store: %d unused rows dropped", dropped)
        return dropped

    def _carry_reads(self, old: RegionStore, new: RegionStore, rows: list[int]) -> None:
        """Copy the rows of ``old``'s read-image files that ``rows`` (live, ascending) keep
        to files named after ``new``, so that the scorer need not read every image again
        (:mod:`vtsearch.query.readcache`). The rows a file has are a prefix of ``rows``, so
        the copies are a prefix of ``new``'s rows; the old files go at the next top-up."""
        width = self.read_width()
        if not width:
            return
        layout = read_layout(old.layout, width)
        for path in self.folder.glob(f"{READ_PREFIX}{old.path.name}-*{READ_SUFFIX}"):
            source = RegionStore(path, layout)
            covered = len(source)
            target = RegionStore(path.with_name(path.name.replace(f"{READ_PREFIX}{old.path.name}-",
                                                                  f"{READ_PREFIX}{new.path.name}-", 1)), layout)
            target.path.unlink(missing_ok=True)  # a compaction killed before its commit left it
            source.copy_rows([row for row in rows if row < covered], target)

    def remove_stale(self) -> list[str]:
        """Delete region files the catalog does not name (lock held)."""
        current = self.catalog.regions_file(REGIONS_FILE) if self.store else None
        stale = [path for path in self.folder.glob("regions*.f16") if path.name != current]
        for path in stale:
            path.unlink(missing_ok=True)
        return [path.name for path in stale]
