"""The store: one index folder's files and how they are kept consistent.

``Store`` owns the manifest, the catalog (the source of truth), the FAISS index
(:mod:`.annsync`), the region store (:mod:`.regionfiles`) and the writer lock. The build
and query paths take a ``Store``; neither opens files of the folder by itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import AnnConfig, Tuning
from ..errors import CatalogMismatchError, IndexExistsError, IndexNotFoundError
from ..records import IndexInfo
from .ann import AnnIndex
from .annsync import AnnSync, placeholder_ann
from .atomic import remove_stale_temps
from .catalog import ERROR, INDEXED, Catalog, public_url
from .check import LOST, CheckReport, Findings, inspect
from .layout import ANN, CATALOG, MANIFEST, RERANKER_FILE, bytes_digest, read_file_name, read_layout
from .lock import WriterLock
from .manifest import Manifest, ManifestFile
from .regionfiles import RegionFiles

__all__ = ["Store", "MANIFEST", "CATALOG", "ANN"]


class Store:
    """The files of one index folder, opened."""

    def __init__(self, path: Path, manifest: Manifest, catalog: Catalog, use_gpu: bool = False,
                 tuning: Tuning | None = None):
        self.path = path
        self.catalog = catalog
        self.lock = WriterLock(path, catalog.writer_lock())
        self.manifest_file = ManifestFile(path / MANIFEST, manifest)
        self.ann = AnnSync(path, catalog, self.lock, self.manifest_file, use_gpu, tuning or Tuning.from_env())
        self.regions = RegionFiles(path, catalog, manifest.regions, self._read_width)

    @property
    def manifest(self) -> Manifest:
        return self.manifest_file.manifest

    @staticmethod
    def exists(path: Path) -> bool:
        return (path / MANIFEST).is_file()

    @classmethod
    def create(cls, path: Path, describe: Callable[[Catalog], Manifest], catalog_url: str | None = None,
               use_gpu: bool = False, tuning: Tuning | None = None) -> "Store":
        """A new, empty index folder; ``describe`` makes its manifest (written last: its
        presence marks a complete index)."""
        cls.refuse_existing(path)
        path.mkdir(parents=True, exist_ok=True)
        catalog = Catalog.open(catalog_url or path / CATALOG, create=True)
        lock = WriterLock(path, catalog.writer_lock())
        try:
            lock.acquire()
            if not catalog.is_empty():
                raise IndexExistsError(
                    f"catalog {catalog.location} already holds images or texts (another index's?); "
                    "give the new index a database of its own"
                )
            manifest = describe(catalog)
            ann = AnnIndex.empty(manifest.embed_dim, manifest.ann, use_gpu=use_gpu)
            ann.save(path / ANN)
            catalog.set_ann_revision(catalog.revision(), manifest.ann.to_dict())
            manifest.save(path / MANIFEST)
        except BaseException:
            catalog.close()
            raise
        finally:
            lock.release()
        store = cls(path, manifest, catalog, use_gpu, tuning)
        store.ann.ann, store.ann.revision = ann, catalog.revision()
        return store

    @classmethod
    def open(cls, path: Path, use_gpu: bool = False, tuning: Tuning | None = None) -> "Store":
        """Open an existing index folder (its FAISS index is loaded by ``ann.load``)."""
        if not (path / MANIFEST).is_file():
            raise IndexNotFoundError(f"no index at {path}", path=str(path))
        manifest = Manifest.load(path / MANIFEST)
        return cls(path, manifest, Catalog.open(manifest.catalog or path / CATALOG), use_gpu, tuning)

    @staticmethod
    def refuse_existing(path: Path) -> None:
        if (path / MANIFEST).exists():
            raise IndexExistsError(f"an index already exists at {path}")

    @staticmethod
    def check_catalog_url(path: Path, manifest: Manifest, catalog_url: str) -> None:
        """Refuse a ``catalog_url`` other than the one the index keeps its catalog in."""
        if public_url(catalog_url) != manifest.catalog:
            kept, requested = str(manifest.catalog or path / CATALOG), public_url(catalog_url)
            raise CatalogMismatchError(f"index {path} keeps its catalog in {kept}, not {requested}",
                                       path=str(path), catalog=kept, requested=requested)

    def close(self) -> None:
        self.lock.release()
        self.catalog.close()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lock for a block (one writer at a time, across processes)."""
        self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    def sync_locked(self) -> None:
        """Under the lock, catch up with what other processes wrote since we looked: the
        FAISS index must reflect the catalog, appends must go to the region file it names."""
        self.regions.sync()
        self.ann.sync_locked()

    def sweep_leftovers(self) -> None:
        """Delete what a killed writer left (lock held: never a live writer's files)."""
        remove_stale_temps(self.path)
        self.regions.remove_stale()
        self.ann.remove_stale_data_files()

    def refresh(self) -> tuple[bool, bool]:
        """Pick up what another process wrote since this one looked: (the manifest was
        reloaded, anything was reloaded). Cheap when nothing changed."""
        if self.lock.held:
            return False, False  # this process is the writer: what it holds is the newest
        manifest_changed = self.manifest_file.changed_on_disk()
        if manifest_changed:
            self.manifest_file.reload()
        return manifest_changed, self.ann.refresh() or manifest_changed

    def rebuild(self, on_disk: bool | None = None) -> AnnConfig:
        """Retrain the FAISS index for the collection's size and swap it in atomically."""
        with self.writing():
            self.regions.sync()
            self.ann.remove_stale_data_files()
            if on_disk is not None and on_disk != self.manifest.ann.on_disk:
                manifest = Manifest.load(self.manifest_file.path)
                self.manifest_file.save(replace(manifest, ann=replace(manifest.ann, on_disk=on_disk, data_file=None)))
            self.ann.ann = self.ann.rebuilt(retrain=True)
            self.ann.save()
        return self.ann.ann.config

    def info(self) -> IndexInfo:
        manifest, catalog = self.manifest, self.catalog
        return IndexInfo(
            path=str(self.path.resolve()), images=catalog.count(INDEXED), errors=catalog.count(ERROR),
            ann_vectors=len(self.ann.ann), encoder=manifest.encoder, embed_dim=manifest.embed_dim,
            preprocess=manifest.preprocess, ann=manifest.ann, regions=manifest.regions, reranker=manifest.reranker,
            schema_version=manifest.schema_version, vtsearch_version=manifest.vtsearch_version,
            created=manifest.created, updated=manifest.updated, encoder_probe=manifest.encoder_probe,
            texts=catalog.text_count(), catalog=catalog.location, kept_reads=self.kept_reads(),
        )

    def _read_width(self) -> int | None:
        """The width of a trained fusion scorer's read images (None without one)."""
        reranker = self.manifest.reranker
        return int(reranker.config["width"]) if reranker is not None and "width" in reranker.config else None

    def kept_reads(self) -> dict[str, Any] | None:
        """The read-image file of the current region file and scorer, when there is one:
        its name, bytes and whole rows (one per region row, unused ones included)."""
        self.regions.sync()
        store, width, checkpoint = self.regions.store, self._read_width(), self.path / RERANKER_FILE
        if store is None or width is None:
            return None
        try:
            path = self.path / read_file_name(store.path.name, bytes_digest(checkpoint.read_bytes()))
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return {"file": path.name, "bytes": size, "rows": size // read_layout(store.layout, width).row_bytes}

    def compact_regions(self) -> int:
        with self.writing():
            self.sync_locked()
            return self.regions.compact(self.ann)

    def check(self, repair: bool = False) -> CheckReport:
        """Do catalog, FAISS index and region store agree? ``repair`` fixes drift. Holds the
        writer lock, so the parts do not move while they are compared."""
        with self.writing():
            self.regions.sync()
            saved, problem = self.ann.read_file()  # the file as it is, not a rebuilt copy
            findings = inspect(self.catalog, saved or placeholder_ann(self.manifest),
                               self.manifest.embed_dim, self.regions.store)
            if saved is None:
                findings.problem("ann", f"{self.ann.path} {problem}")
                findings.rebuild_ann = True
            if repair:
                self._repair(findings)
        return findings.report

    def _repair(self, findings: Findings) -> None:
        report = findings.report
        for temp in remove_stale_temps(self.path):
            report.repaired.append(f"deleted {temp.name}, left by an interrupted write")
        if findings.cut_region_tail:
            self.regions.store.cut_torn_tail()
            report.repaired.append("cut the torn row off the end of the region store")
        by_loss: dict[str, list[int]] = {}
        for row_id, what in findings.reencode.items():
            by_loss.setdefault(what, []).append(row_id)
        for what, ids in by_loss.items():
            self.catalog.mark_for_reencoding(ids, LOST.format(what=what))
            report.repaired.append(f"marked {len(ids)} images whose {what} were lost for re-encoding")
        if findings.rebuild_ann or findings.reencode:
            self.ann.ann = self.ann.rebuilt()
            self.ann.save()
            report.repaired.append(f"rebuilt ann.faiss from the catalog ({len(self.ann.ann)} vectors)")
        if self.regions.store is not None:
            if report.dead_region_rows or findings.reencode:
                dropped = self.regions.compact(self.ann)
                report.repaired.append(f"compacted the region store ({dropped} unused rows dropped)")
            for name in self.regions.remove_stale():
                report.repaired.append(f"deleted {name}, left by an interrupted compaction")

