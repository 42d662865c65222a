"""The FAISS revision protocol: ``ann.faiss`` against the catalog it was built from.

The catalog is the source of truth and counts its committed writes (its revision);
``ann.faiss`` records the revision it reflects. A reader loads the saved file when it is
current, and otherwise rebuilds it from the catalog: saved when this process can take
the writer lock, in memory only while another process writes (that writer brings the
file up to date when it finishes). Readers map a large index instead of reading it; the
writer needs it in memory to change it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import AnnConfig, Tuning
from ..errors import IndexLockedError
from . import annbuild, ondisk
from .ann import AnnIndex
from .catalog import INDEXED, Catalog
from .layout import ANN, FileIdentity, file_identity
from .lock import WriterLock
from .manifest import Manifest, ManifestFile

log = logging.getLogger(__name__)


def placeholder_ann(manifest: Manifest) -> AnnIndex:
    """An empty exact index, until the real one is loaded or built."""
    return AnnIndex.empty(manifest.embed_dim, AnnConfig())


class AnnSync:
    """The FAISS index of one index folder, kept in step with its catalog."""

    def __init__(self, folder: Path, catalog: Catalog, lock: WriterLock, manifest: ManifestFile,
                 use_gpu: bool, tuning: Tuning):
        self.path = folder / ANN
        self.catalog = catalog
        self.lock = lock
        self.manifest = manifest
        self.use_gpu = use_gpu
        self.tuning = tuning
        self.ann = placeholder_ann(manifest.manifest)
        self.revision = -1  # the catalog revision the in-memory index reflects
        self._file: FileIdentity | None = None  # the ann.faiss last read

    @property
    def embed_dim(self) -> int:
        return self.manifest.manifest.embed_dim

    def is_current(self) -> bool:
        return self.revision == self.catalog.revision()

    def mark_current(self) -> None:
        """The catalog moved without changing any vector (regions relocated): record it."""
        self.revision = self.catalog.revision()
        self.catalog.set_ann_revision(self.revision)

    def load(self, rebuild_stale: bool = True) -> None:
        """Load ``ann.faiss``; rebuild it from the catalog when missing, damaged or behind
        (a run killed before its final save). ``rebuild_stale`` false: keep what is saved,
        as it is (``vtsearch check`` wants to see it)."""
        revision = self.catalog.revision()
        ann, problem = self.read_file()
        if ann is not None:
            problem = ("records no catalog revision (saved by an older vtsearch)" if self.catalog.ann_revision() < 0
                       else "is behind the catalog (an interrupted run?)")
            if self._saved_is_current(ann, revision):
                self.ann, self.revision = ann, revision
                return
            if not rebuild_stale or self.lock.is_held_elsewhere():
                self.ann, self.revision = ann, -1
                return
        if not rebuild_stale:
            self.ann, self.revision = placeholder_ann(self.manifest.manifest), -1
            return
        log.warning("%s %s; rebuilding it from the catalog", self.path, problem)
        try:
            self.lock.acquire()
        except IndexLockedError:  # someone else writes; keep a rebuilt copy in memory only
            self.ann, self.revision = self.rebuilt(in_memory=True), -1
            return
        try:
            self.ann = self.rebuilt()
            self.save()
        finally:
            self.lock.release()

    def refresh(self) -> bool:
        """Reload when another process saved a newer ``ann.faiss``; True when it did."""
        if self.catalog.revision() != self.revision and file_identity(self.path) != self._file:
            self.load()
            return True
        return False

    def read_file(self) -> tuple[AnnIndex | None, str]:
        """The saved FAISS index, or None and why not."""
        self._file = file_identity(self.path)
        if not self.path.is_file():
            return None, "is missing"
        saved = self.catalog.ann_config()
        config = AnnConfig.from_dict(saved) if saved else self.manifest.manifest.ann
        try:
            ann = AnnIndex.load(self.path, config, self.use_gpu, mmap=not self.lock.held)
        except Exception as error:  # damaged file: derived data, rebuildable
            return None, f"is unreadable ({error})"
        ann.refine = self.exact_vectors
        return ann, ""

    def exact_vectors(self, ids: list[int]) -> np.ndarray:
        return self.catalog.vectors(ids, self.embed_dim)

    def _saved_is_current(self, ann: AnnIndex, revision: int) -> bool:
        return self.catalog.ann_revision() == revision and len(ann) == self.catalog.count(INDEXED)

    def save(self) -> None:
        """Save ``ann.faiss``, then record the catalog revision it reflects (lock held)."""
        revision = self.catalog.revision()
        self.ann.save(self.path)
        self.catalog.set_ann_revision(revision, self.ann.config.to_dict())
        self.revision = revision
        self._file = file_identity(self.path)
        if self.manifest.manifest.ann != self.ann.config:  # the manifest describes it too
            self.manifest.save(replace(Manifest.load(self.manifest.path), ann=self.ann.config))

    def sync_locked(self) -> None:
        """Under the lock, catch up with writes other processes made since we looked."""
        revision = self.catalog.revision()
        if self.revision == revision and len(self.ann) == self.catalog.count(INDEXED):
            if self.ann.writable:
                return
            saved, _problem = self.read_file()  # mapped read-only: load it to change it
            if saved is not None and len(saved) == len(self.ann):
                self.ann = saved
                return
        self.ann = self.rebuilt()
        self.revision = revision

    def write_target(self) -> AnnIndex:
        """What a run adds vectors to: the index itself when it can take them; else (a
        pinned IVF kind still untrained, or lists on disk, never changed in place) an
        empty stand-in, and :meth:`settle` builds the real one after the run."""
        if self.ann.is_trained and self.ann.writable:
            return self.ann
        return placeholder_ann(self.manifest.manifest)

    def settle(self) -> None:
        """After a run that added vectors: retrain for the new size when it calls for it,
        rebuild what could not be changed in place, then save (lock held)."""
        count = self.catalog.count(INDEXED)
        if not self.ann.is_trained or self.needs_rebuild(count):
            log.info("%d images: rebuilding the FAISS index for this size", count)
            self.ann = self.rebuilt(retrain=True)
        elif not self.ann.writable:
            self.ann = self.rebuilt()
        self.manifest.save()
        self.save()

    def remove(self, ids: list[int]) -> None:
        """Drop removed images, in place or by a rebuild (lists on disk), then save."""
        if self.ann.writable:
            self.ann.remove(ids)
        else:
            self.remove_stale_data_files()
            self.ann = self.rebuilt()
        self.save()

    def needs_rebuild(self, count: int) -> bool:
        return annbuild.needs_rebuild(self.manifest.manifest.ann, count, self.embed_dim, self.tuning.ivf_threshold)

    def rebuilt(self, retrain: bool = False, in_memory: bool = False) -> AnnIndex:
        """The FAISS index built afresh from the catalog's embeddings (its source of truth).

        An auto index is retrained, changing kind if the collection's size calls for it,
        when ``retrain`` is set or when no calibrated settings exist yet. ``in_memory``:
        write no list data into the folder, whatever the config says (no lock held).
        """
        dim, count, config = self.embed_dim, self.catalog.count(INDEXED), self.manifest.manifest.ann
        if retrain or self.needs_rebuild(count) or (not config.exact and not config.nprobe):
            config = annbuild.choose_config(count, dim, config, self.tuning.ivf_threshold)
        if in_memory:
            config = replace(config, on_disk=False, data_file=None)
        return annbuild.build_from_catalog(self.catalog, dim, config, self.use_gpu, self.path.parent)

    def remove_stale_data_files(self) -> None:
        """Delete on-disk list data that the saved index does not name (lock held, at the
        start of a write: a reader that mapped an older file keeps its mapping)."""
        saved = self.catalog.ann_config() or {}
        current = saved.get("data_file") if saved.get("on_disk") else None
        for path in ondisk.data_files(self.path.parent):
            if path.name != current:
                path.unlink(missing_ok=True)
