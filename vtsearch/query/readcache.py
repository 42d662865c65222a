"""What the trained fusion scorer reads of each image, kept beside the region store.

A reranked search runs the fusion scorer over each candidate's regions. Much of that
work does not depend on the query: the regions' input projection and the region block's
self-attention among them (``FusionScorer.read_image``), about half of a rerank's
multiply-adds with the default scorer over ViT-B-32's regions. An index with a trained
scorer therefore keeps every image as the text blocks read it, row for row beside the
region store, and a query reads those rows instead of the regions::

    read-<region file>-<scorer digest>-<format>.f32     row i: region row i as read, (P+R) x width float32

(ViT-B-32's 7 x 7 regions at the default width 128: 25,088 bytes an image, a third of
its regions' 75,264.) They are read in float32 (``Reranker.read_images``) and kept so,
so that a float32 search ranks as it does without them; where the index computes in
bfloat16, they are a little more exact than what a query would compute itself. The
name says which region file and which scorer the rows belong to: a retrained scorer or
a compacted region store finds no file of its own, and its queries read the regions as
before (the same results, slower) until a writer tops the file up. The file grows by
appending, like the region store; a shortlist's images past its end (added since) are
read from their regions at query time. Writers top it up under the writer lock at the
end of ``index``/``add``/``remove``/``check --repair`` and after ``train-reranker``, and
delete the files of other names; a compaction of the region store copies the rows it
keeps to a file of the new region file's name (``RegionFiles``). The writer decides
from ``reranker.pt`` as it is on disk, not from a scorer it loaded earlier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..fusion import ReadImages
from ..progress import NoProgress, Progress
from ..store.catalog import Catalog
from ..store.layout import READ_PREFIX, READ_SUFFIX, read_file_name, read_layout
from ..store.regions import REGIONS_FILE, RegionStore
from .rerank import Reranker
from .sources import StoredRegions

TOP_UP_BATCH = 256  # images read per scorer call when topping up


def remove_read_files(folder: Path, keep: Path | None = None) -> list[str]:
    """Delete the read-image files of ``folder`` but ``keep`` (writer lock held)."""
    stale = [path for path in folder.glob(f"{READ_PREFIX}*{READ_SUFFIX}") if path != keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return [path.name for path in stale]


class ReadCache:
    """The images of one index as its trained ``reranker`` reads them."""

    def __init__(self, folder: Path, catalog: Catalog, reranker: Reranker, regions: StoredRegions):
        if reranker.digest is None:
            raise ValueError("a read-image cache needs a scorer saved to or loaded from a file")
        self.folder = folder
        self.catalog = catalog
        self.reranker = reranker
        self.regions = regions
        self.layout = read_layout(regions.store.layout, reranker.read_width)
        self._file: RegionStore | None = None

    def file(self, region_file: str) -> RegionStore:
        """The read rows of ``region_file`` (a file that may not exist: then it holds none)."""
        name = read_file_name(region_file, self.reranker.digest or "")
        if self._file is None or self._file.path.name != name:
            self._file = RegionStore(self.folder / name, self.layout)
        return self._file

    def images(self, ids: Sequence[int]) -> ReadImages:
        """The images of catalog ids, in order, as the scorer reads them: from the file
        where it has them, else read from their regions now."""
        name, wanted = self.regions.locate(ids)
        kept = self.file(name)
        covered = len(kept)
        found = [slot for slot, row in enumerate(wanted) if row < covered]
        values = torch.empty(len(ids), self.layout.regions, self.layout.dim)
        if found:
            try:
                values[found] = torch.from_numpy(kept.read([wanted[slot] for slot in found]))
            except FileNotFoundError:  # a writer replaced it since the lookup: look again
                return self.images(ids)
        rest = [slot for slot, row in enumerate(wanted) if row >= covered]
        if rest:
            values[rest] = self.reranker.read_images(self.regions.regions([ids[slot] for slot in rest])).values
        return ReadImages(values)

    def top_up(self, progress: Progress | None = None) -> int:
        """Read the region rows the file does not have yet and append them; delete other
        read-image files. Writer lock held. Returns the rows added."""
        progress = progress or NoProgress()
        name = self.catalog.regions_file(REGIONS_FILE)
        source = RegionStore(self.folder / name, self.regions.store.layout)
        kept = self.file(name)
        kept.cut_torn_tail()  # a top-up killed mid-append
        if len(kept) > len(source):  # rows the region file no longer has (restored from a backup?): start again
            kept.path.unlink()
        start, end = len(kept), len(source)
        progress.start(max(0, end - start))
        try:
            for first in range(start, end, TOP_UP_BATCH):
                rows = list(range(first, min(end, first + TOP_UP_BATCH)))
                regions = torch.from_numpy(source.read(rows).astype(np.float32))
                kept.append(self.reranker.read_images(regions).values.numpy())
                progress.advance(len(rows))
        finally:
            progress.close()
        remove_read_files(self.folder, keep=kept.path)
        return max(0, end - start)
