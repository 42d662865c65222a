"""``Index``: one object owns one index directory.

Layout::

    DIR/manifest.json     encoder spec, ANN config, versions, times
    DIR/catalog.sqlite    the source of truth (images, errors, embeddings); or a database
                          on a PostgreSQL server, whose URL the manifest records
    DIR/ann.faiss         FAISS index of the embeddings (derived, rebuildable)
    DIR/ann-*.ivfdata     its inverted lists, when built on disk (vtsearch rebuild --on-disk)
    DIR/regions.f16       region features, fp16, memory-mapped (absent: --no-regions)
    DIR/reranker.pt       trained fusion scorer (absent: untrained, stage-1 order)
    DIR/.writer.lock      the writer lock

Writers (``add``) take the lock; readers (``search``) never do. The encoder is loaded
on first use, or passed in (tests pass small real ones).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import annbuild, ondisk
from .ann import AnnIndex, gpu_count
from .annbuild import choose_config, needs_rebuild
from .atomic import remove_stale_temps
from .catalog import ERROR, INDEXED, Catalog, public_url
from .check import LOST, CheckReport, Findings, inspect
from .config import AnnConfig, EncoderSpec, IngestOptions
from .decode import decode_query_bytes, decode_query_image
from .device import resolve_device
from .encode import Encoder
from .errors import IndexExistsError, IndexLockedError, IndexNotFoundError, ModelMismatchError, QueryError
from .distributed import RayOptions, ingest_ray
from .ingest import Progress, ingest
from .lock import WriterLock
from .manifest import Manifest
from .filters import SearchFilter
from .fusion import FusionConfig
from .records import (
    AttentionMap, ErrorRecord, IngestSummary, MatchResponse, MatchResult, SearchResponse, SearchResult,
)
from .regions import REGIONS_FILE, RegionLayout, RegionStore, compacted_name
from .rerank import RERANKER_FILE, ComputedRegions, RegionSource, Reranker, StoredRegions
from .search import MAX_QUERY_CHARS, check_k, check_text, run_query
from .texts import TextRecord, TextRow, check_text_value


log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
ANN = "ann.faiss"
COMPACT_WHEN_UNUSED = 0.25  # compact the region store when more of it than this is unused
DEFAULT_REGION_GRID = 7
TEXT_BATCH = 256  # texts encoded per forward pass
PROBE_AGREEMENT = 0.99  # same weights agree to ~1e-4 (fp16 on a GPU); other weights fall far below

QueryImage = str | int | bytes | os.PathLike  # a file, an upload's bytes, or an indexed image's id


@dataclass(frozen=True)
class RemoveSummary:
    removed: list[str]  # paths removed from the index
    not_indexed: list[str]  # given paths with nothing indexed at or under them

    def to_dict(self) -> dict[str, Any]:
        return {"removed": len(self.removed), "paths": self.removed, "not_indexed": self.not_indexed}


@dataclass(frozen=True)
class TextsSummary:
    added: int
    duplicates: int  # already in the collection, or repeated in the input
    longer_than_context: int  # matched on their first tokens only

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates,
                "longer_than_context": self.longer_than_context}


@dataclass(frozen=True)
class IndexInfo:
    path: str
    images: int
    errors: int
    ann_vectors: int
    manifest: dict[str, Any]
    texts: int = 0  # the text collection (vtsearch match)
    catalog: str = ""  # the SQLite file, or the server's URL without its password

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "catalog": self.catalog,
            "images": self.images,
            "errors": self.errors,
            "ann_vectors": self.ann_vectors,
            "texts": self.texts,
            "encoder": self.manifest["encoder"],
            "ann": self.manifest["ann"],
            "regions": self.manifest["regions"],
            "reranker": self.manifest["reranker"],
            "schema_version": self.manifest["schema_version"],
            "vtsearch_version": self.manifest["vtsearch_version"],
            "created": self.manifest["created"],
            "updated": self.manifest["updated"],
        }


class Index:
    """An image index on disk: catalog, FAISS index and manifest."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        catalog: Catalog,
        ann: AnnIndex,
        device: str = "auto",
        encoder: Encoder | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.catalog = catalog
        self.ann = ann
        self.device = device
        self._encoder = encoder
        self._lock = WriterLock(path, catalog.writer_lock())
        self._reranker: Reranker | None = None
        self._ann_revision = -1  # the catalog revision the in-memory FAISS index reflects
        self._text_index: tuple[int, AnnIndex] | None = None  # (texts revision, index of texts)
        self._ann_file: tuple[int, int, int] | None = None  # the ann.faiss last read (inode, size, mtime)
        self._manifest_file = _file_identity(path / MANIFEST)
        self._region_store = (RegionStore(path / catalog.regions_file(REGIONS_FILE), manifest.regions)
                              if manifest.regions and manifest.regions.stored else None)

    # lifecycle

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        spec: EncoderSpec | None = None,
        device: str = "auto",
        encoder: Encoder | None = None,
        ann_config: AnnConfig | None = None,
        store_regions: bool = True,
        region_grid: int | None = None,
        catalog_url: str | None = None,
    ) -> "Index":
        """Create a new, empty index at ``path`` (the folder may exist but hold no index).

        Region features are kept for reranking unless ``store_regions`` is false, in which
        case they are computed for each shortlist at query time instead. ``catalog_url``
        puts the catalog in a PostgreSQL database (empty, or holding only what a create
        that died left) instead of ``DIR/catalog.sqlite``.
        """
        path = Path(path)
        if (path / MANIFEST).exists():
            raise IndexExistsError(f"an index already exists at {path}")
        spec = spec or EncoderSpec()
        if encoder is None:
            encoder = Encoder.load(spec, resolve_device(device))
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
            manifest = Manifest(
                encoder=encoder.spec, embed_dim=encoder.embed_dim,
                preprocess=encoder.describe()["preprocess"], ann=ann_config or AnnConfig(),
                regions=_region_layout(encoder, store_regions, region_grid),
                encoder_probe=encoder.probe_vector(),
                catalog=catalog.location if catalog.on_server else None,
            )
            ann = AnnIndex.empty(encoder.embed_dim, manifest.ann, use_gpu=_use_gpu(device))
            ann.save(path / ANN)
            catalog.set_ann_revision(catalog.revision(), manifest.ann.to_dict())
            manifest.save(path / MANIFEST)  # last: its presence marks a complete index
        except BaseException:
            catalog.close()
            raise
        finally:
            lock.release()
        index = cls(path, manifest, catalog, ann, device, encoder)
        index._ann_revision = catalog.revision()
        return index

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        encoder: Encoder | None = None,
        rebuild_stale: bool = True,
    ) -> "Index":
        """Open an existing index; a missing or stale FAISS index is rebuilt from the catalog
        (unless ``rebuild_stale`` is false: ``vtsearch check`` wants to see it as it is)."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise IndexNotFoundError(
                f"no index at {path} (create one with: vtsearch index PATH --index {path})"
            )
        manifest = Manifest.load(path / MANIFEST)
        catalog = Catalog.open(manifest.catalog or path / CATALOG)
        if encoder is not None and encoder.spec != manifest.encoder:
            raise ModelMismatchError(_mismatch_message(path, manifest.encoder, encoder.spec))
        index = cls(path, manifest, catalog, _placeholder_ann(manifest), device, encoder)
        index.ann = index._load_ann(rebuild_stale)
        return index

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        spec: EncoderSpec | None = None,
        device: str = "auto",
        encoder: Encoder | None = None,
        store_regions: bool = True,
        region_grid: int | None = None,
        catalog_url: str | None = None,
    ) -> "Index":
        """Open the index at ``path``, checking ``spec`` (and ``catalog_url``) against it,
        or create it."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            return cls.create(path, spec, device, encoder, store_regions=store_regions,
                              region_grid=region_grid, catalog_url=catalog_url)
        manifest = Manifest.load(path / MANIFEST)
        if spec is not None and not _same_encoder(manifest.encoder, spec):
            raise ModelMismatchError(_mismatch_message(path, manifest.encoder, spec))
        if catalog_url is not None and public_url(catalog_url) != manifest.catalog:
            raise IndexExistsError(
                f"index {path} keeps its catalog in {manifest.catalog or path / CATALOG}, not "
                f"{public_url(catalog_url)}; leave out --catalog, or index into a new --index"
            )
        return cls.open(path, device, encoder)

    def close(self) -> None:
        self._lock.release()
        self.catalog.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # collaborators

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            encoder = Encoder.load(self.manifest.encoder, resolve_device(self.device))
            if encoder.embed_dim != self.manifest.embed_dim:
                raise ModelMismatchError(
                    f"{encoder.spec.describe()} now gives {encoder.embed_dim}-wide vectors, but index "
                    f"{self.path} holds {self.manifest.embed_dim}-wide ones: its weights changed "
                    "since the index was built; restore them or index again into a new --index"
                )
            if self.manifest.encoder_probe is not None:
                agreement = float(np.dot(encoder.probe_vector(), self.manifest.encoder_probe))
                if agreement < PROBE_AGREEMENT:
                    raise ModelMismatchError(
                        f"{encoder.spec.describe()} now embeds text differently from when index {self.path} "
                        f"was built (cosine {agreement:.3f} on a fixed probe text): its weights changed; "
                        "restore them or index again into a new --index"
                    )
            self._encoder = encoder
        return self._encoder

    @property
    def region_source(self) -> RegionSource | None:
        """Where the reranker gets regions; None when the encoder has none."""
        if self.manifest.regions is None:
            return None
        if self._region_store is not None:
            return StoredRegions(self._region_store, self.catalog)
        return ComputedRegions(self.encoder, self.catalog, self.manifest.regions)

    @property
    def reranker(self) -> Reranker | None:
        """The trained scorer from ``reranker.pt``, or an untrained one (stage-1 order)."""
        if self.manifest.regions is None:
            return None
        if self._reranker is None:
            device = resolve_device(self.device)
            if (self.path / RERANKER_FILE).is_file():
                self._reranker = Reranker.load(self.path / RERANKER_FILE, device)
            else:
                layout = self.manifest.regions
                config = FusionConfig(text_dim=self.encoder.text_token_dim, region_dim=layout.dim, grid=layout.grid,
                                      max_tokens=self.encoder.context_length)
                self._reranker = Reranker.untrained(config, device=device)
        return self._reranker

    def save_reranker(self, reranker: Reranker) -> None:
        """Keep trained weights in the index (they survive later ``add`` runs)."""
        self._lock.acquire()
        try:
            reranker.save(self.path / RERANKER_FILE)
            self.manifest = Manifest.load(self.path / MANIFEST)  # another writer may have saved it
            self.manifest.reranker = {"config": reranker.scorer.config.to_dict(), **reranker.trained}
            self._save_manifest()
        finally:
            self._lock.release()
        self._reranker = reranker

    def _load_ann(self, rebuild_stale: bool = True) -> AnnIndex:
        """Load ``ann.faiss``; rebuild it from the catalog when missing, damaged or behind.

        Behind means the catalog has committed writes the saved file does not reflect
        (a run was killed before its final save). While another process holds the
        writer lock the saved file is used as it is: a consistent, slightly older
        snapshot, which the writer brings up to date when it finishes.
        """
        ann_path = self.path / ANN
        revision = self.catalog.revision()
        ann, problem = self._read_ann_file()
        if ann is not None:
            problem = ("records no catalog revision (saved by an older vtsearch)" if self.catalog.ann_revision() < 0
                       else "is behind the catalog (an interrupted run?)")
        if ann is not None and self._ann_is_current(ann, revision):
            self._ann_revision = revision
            return ann
        if ann is not None and (not rebuild_stale or self._lock.is_held_elsewhere()):
            self._ann_revision = -1
            return ann
        if not rebuild_stale:
            self._ann_revision = -1
            return _placeholder_ann(self.manifest)
        log.warning("%s %s; rebuilding it from the catalog", ann_path, problem)
        try:
            self._lock.acquire()
        except IndexLockedError:  # someone else writes; keep a rebuilt copy in memory only
            self._ann_revision = -1
            return self._rebuild_ann(in_memory=True)
        try:
            self.ann = self._rebuild_ann()
            self._save_ann()
        finally:
            self._lock.release()
        return self.ann

    def refresh(self) -> bool:
        """Pick up what another process wrote since this one looked: a newer ``ann.faiss``
        (after an ``index`` run) or manifest (a trained reranker). Cheap when nothing
        changed (a catalog query and two stats); ``query`` calls it. Returns True when
        something was reloaded."""
        if self._lock.held:
            return False  # this process is the writer: what it holds is the newest
        reloaded = False
        manifest_file = _file_identity(self.path / MANIFEST)
        if manifest_file != self._manifest_file:
            self.manifest = Manifest.load(self.path / MANIFEST)
            self._manifest_file = manifest_file
            self._reranker = None
            reloaded = True
        if (self.catalog.revision() != self._ann_revision
                and _file_identity(self.path / ANN) != self._ann_file):
            self.ann = self._load_ann()
            reloaded = True
        return reloaded

    def _read_ann_file(self) -> tuple[AnnIndex | None, str]:
        """The saved FAISS index, or None and why not."""
        ann_path = self.path / ANN
        self._ann_file = _file_identity(ann_path)
        if not ann_path.is_file():
            return None, "is missing"
        saved = self.catalog.ann_config()
        config = AnnConfig.from_dict(saved) if saved else self.manifest.ann
        try:
            # readers map a large index instead of reading it; the writer needs it in memory
            ann = AnnIndex.load(ann_path, config, _use_gpu(self.device), mmap=not self._lock.held)
        except Exception as error:  # damaged file: derived data, rebuildable
            return None, f"is unreadable ({error})"
        ann.refine = self._exact_vectors
        return ann, ""

    def _exact_vectors(self, ids: list[int]) -> np.ndarray:
        return self.catalog.vectors(ids, self.manifest.embed_dim)

    def _ann_is_current(self, ann: AnnIndex, revision: int) -> bool:
        return self.catalog.ann_revision() == revision and len(ann) == self.catalog.count(INDEXED)

    def _save_ann(self) -> None:
        """Save ``ann.faiss``, then record the catalog revision it reflects (lock held)."""
        revision = self.catalog.revision()
        self.ann.save(self.path / ANN)
        self.catalog.set_ann_revision(revision, self.ann.config.to_dict())
        self._ann_revision = revision
        self._ann_file = _file_identity(self.path / ANN)
        if self.manifest.ann != self.ann.config:  # the manifest describes it too
            self.manifest = replace(Manifest.load(self.path / MANIFEST), ann=self.ann.config)
            self._save_manifest()

    def _save_manifest(self) -> None:
        self.manifest.save(self.path / MANIFEST)
        self._manifest_file = _file_identity(self.path / MANIFEST)

    # writing

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        options: IngestOptions | None = None,
        progress: Progress | None = None,
        ray: RayOptions | None = None,
    ) -> IngestSummary:
        """Index the image files under ``paths``; returns what happened to them.

        ``ray``: encode on a pool of Ray actors (:mod:`vtsearch.distributed`) instead of
        in this process; the result is the same."""
        options = options or IngestOptions()
        self._lock.acquire()
        try:
            # another process may have written since we opened (a trained reranker, say)
            self.manifest = Manifest.load(self.path / MANIFEST)
            self._sync_locked()
            remove_stale_temps(self.path)  # a killed writer's, never ours: we hold the lock
            self._remove_stale_region_files()
            self._remove_stale_data_files()
            # an untrained index (a pinned IVF kind, still empty) is trained after the run;
            # one on disk is never changed in place: it is merged anew after the run
            target = self.ann if self.ann.is_trained and self.ann.writable else _placeholder_ann(self.manifest)
            if ray is not None:
                summary = ingest_ray(
                    [os.fspath(p) for p in paths], self.path, self.catalog, target, self.manifest.encoder,
                    self.device, options, ray, progress, self._region_store, self.manifest.encoder_probe,
                )
            else:
                summary = ingest(
                    [os.fspath(p) for p in paths], self.catalog, target, self.encoder,
                    options, progress, self._region_store,
                )
            count = self.catalog.count(INDEXED)
            if not self.ann.is_trained or needs_rebuild(self.ann.config, count, self.manifest.embed_dim):
                log.info("%d images: rebuilding the FAISS index for this size", count)
                self.ann = self._rebuild_ann(retrain=True)
            elif not self.ann.writable:
                self.ann = self._rebuild_ann()
            self._save_manifest()
            self._save_ann()
            self._compact_regions_if_sparse()
        finally:
            self._lock.release()
        return summary

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> RemoveSummary:
        """Remove files (or everything under folders) from the index, whether or not
        they still exist on disk."""
        self._lock.acquire()
        try:
            self._sync_locked()
            found: dict[str, int] = {}
            not_indexed: list[str] = []
            for given in paths:
                root = os.path.abspath(os.path.expanduser(os.fspath(given)))
                entries = self.catalog.under(root)
                if not entries:
                    not_indexed.append(root)
                found.update({path: entry.id for path, entry in entries.items()})
            if found:
                removed = self.catalog.remove(list(found.values()))
                if self.ann.writable:
                    self.ann.remove(removed)
                else:
                    self._remove_stale_data_files()
                    self.ann = self._rebuild_ann()
                self._save_ann()
                self._compact_regions_if_sparse()
        finally:
            self._lock.release()
        return RemoveSummary(removed=sorted(found), not_indexed=not_indexed)

    def compact_regions(self) -> int:
        """Copy the live region rows to a new file and drop the old one; returns the rows
        dropped. Searches keep reading the old file until the catalog points at the new."""
        self._lock.acquire()
        try:
            self._sync_locked()
            return self._compact_regions_locked()
        finally:
            self._lock.release()

    def _compact_regions_if_sparse(self) -> None:
        store = self._region_store
        if store is not None and len(store) > 0:
            if len(store) - self.catalog.count_region_rows() > len(store) * COMPACT_WHEN_UNUSED:
                self._compact_regions_locked()

    def _compact_regions_locked(self) -> int:
        old = self._region_store
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
        ann_was_current = self._ann_revision == self.catalog.revision()
        self.catalog.relocate_regions({row_id: row for (row_id, _old), row in zip(live, placed)}, new.path.name)
        if ann_was_current:  # FAISS holds the same vectors: it stays current
            self._ann_revision = self.catalog.revision()
            self.catalog.set_ann_revision(self._ann_revision)
        self._region_store = new
        dropped = len(old) - len(live)
        self._remove_stale_region_files()
        log.info("compacted the region store: %d unused rows dropped", dropped)
        return dropped

    def _sync_region_store(self) -> None:
        """Follow the region file the catalog names (another process may have compacted)."""
        if self._region_store is not None:
            name = self.catalog.regions_file(REGIONS_FILE)
            if name != self._region_store.path.name:
                self._region_store = RegionStore(self.path / name, self._region_store.layout)

    def _remove_stale_data_files(self) -> None:
        """Delete on-disk list data that the saved index does not name (lock held, at the
        start of a write: a reader that mapped an older file keeps its mapping)."""
        saved = self.catalog.ann_config() or {}
        current = saved.get("data_file") if saved.get("on_disk") else None
        for path in ondisk.data_files(self.path):
            if path.name != current:
                path.unlink(missing_ok=True)

    def _remove_stale_region_files(self) -> list[str]:
        """Delete region files the catalog does not name (lock held)."""
        current = self.catalog.regions_file(REGIONS_FILE) if self._region_store else None
        stale = [path for path in self.path.glob("regions*.f16") if path.name != current]
        for path in stale:
            path.unlink(missing_ok=True)
        return [path.name for path in stale]

    def _sync_locked(self) -> None:
        """Under the lock, catch up with writes other processes made since we looked: the
        FAISS index must reflect the catalog, and appends must go to the region file the
        catalog names."""
        self._sync_region_store()
        revision = self.catalog.revision()
        if self._ann_revision == revision and len(self.ann) == self.catalog.count(INDEXED):
            if self.ann.writable:
                return
            saved, _problem = self._read_ann_file()  # mapped read-only: load it to change it
            if saved is not None and len(saved) == len(self.ann):
                self.ann = saved
                return
        self.ann = self._rebuild_ann()
        self._ann_revision = revision

    def _rebuild_ann(self, retrain: bool = False, in_memory: bool = False) -> AnnIndex:
        """The FAISS index built afresh from the catalog's embeddings (its source of truth).

        An auto index is retrained, changing kind if the collection's size calls for it,
        when ``retrain`` is set or when no calibrated settings exist yet. ``in_memory``:
        write no list data into the folder, whatever the config says (no lock held).
        """
        dim, count, config = self.manifest.embed_dim, self.catalog.count(INDEXED), self.manifest.ann
        if retrain or needs_rebuild(config, count, dim) or (not config.exact and not config.nprobe):
            config = choose_config(count, dim, config)
        if in_memory:
            config = replace(config, on_disk=False, data_file=None)
        return annbuild.build_from_catalog(self.catalog, dim, config, _use_gpu(self.device), self.path)

    def rebuild(self, on_disk: bool | None = None) -> AnnConfig:
        """Retrain the FAISS index from the catalog for the collection's current size and
        swap it in atomically; searches use the old one until the swap. Returns its config.

        ``on_disk``: from now on build IVF indexes from shards merged into a memory-mapped
        data file (True), or in memory (False); None keeps the current choice.
        """
        self._lock.acquire()
        try:
            self._sync_region_store()
            self._remove_stale_data_files()
            if on_disk is not None and on_disk != self.manifest.ann.on_disk:
                self.manifest = Manifest.load(self.path / MANIFEST)
                self.manifest.ann = replace(self.manifest.ann, on_disk=on_disk, data_file=None)
                self._save_manifest()
            self.ann = self._rebuild_ann(retrain=True)
            self._save_ann()
        finally:
            self._lock.release()
        return self.ann.config

    # reading

    def query(
        self,
        text: str | None = None,
        *,
        image: QueryImage | None = None,
        k: int = 10,
        recall_k: int = 100,
        rerank: bool = True,
        filters: SearchFilter | None = None,
    ) -> SearchResponse:
        """Search by text (reranked) or by example image (stage 1), with timings.

        ``image``: a file's path, its bytes (an upload), or an indexed image's id.
        ``filters`` restricts the results to images that meet its conditions."""
        check_k(k)
        if (text is None) == (image is None):
            raise QueryError("give a query text or a query image (one of them)")
        self.refresh()
        started = time.perf_counter()
        notices: list[str] = []
        if text is not None:
            text = check_text(text)[:MAX_QUERY_CHARS]
            notices = self._length_notices(text)
            features = self.encoder.encode_text_features([text])
            vector, tokens = features.vectors[0], features.tokens[0]
        else:
            _, vector, _, _ = self._query_image(image)
            tokens = None
        encode_ms = (time.perf_counter() - started) * 1000.0
        reranker = self.reranker if rerank and tokens is not None else None
        use_scorer = reranker is not None and reranker.changes_order
        response = run_query(
            vector, k, self.ann, self.catalog, recall_k=recall_k, text_tokens=tokens,
            reranker=reranker if use_scorer else None,
            region_source=self.region_source if use_scorer else None, encode_ms=encode_ms,
            conditions=filters,
        )
        return replace(response, notices=notices) if notices else response

    def _length_notices(self, text: str) -> list[str]:
        if self.encoder.fits_context(text):
            return []
        count, context = self.encoder.token_count(text), self.encoder.context_length
        at_least = "at least " if count >= 4 * context else ""
        return [f"the query is {at_least}{count} tokens long; the model reads the first {context} "
                "and ignores the rest"]

    def search(self, query: str | os.PathLike[str], k: int = 10, *, image: bool = False,
               recall_k: int = 100, rerank: bool = True, filters: SearchFilter | None = None,
               ) -> list[SearchResult]:
        """Search by text, or by example when ``image`` is true (``query`` is then a path)."""
        if image:
            return self.query(image=query, k=k, filters=filters).results
        return self.query(str(query), k=k, recall_k=recall_k, rerank=rerank, filters=filters).results

    def search_text(self, text: str, k: int = 10, recall_k: int = 100, rerank: bool = True,
                    filters: SearchFilter | None = None) -> list[SearchResult]:
        return self.query(text, k=k, recall_k=recall_k, rerank=rerank, filters=filters).results

    def search_image(self, path: QueryImage, k: int = 10,
                     filters: SearchFilter | None = None) -> list[SearchResult]:
        return self.query(image=path, k=k, filters=filters).results

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      filters: SearchFilter | None = None) -> list[SearchResult]:
        """Search with a query vector in the encoder's space (normalised here)."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        self.refresh()
        return run_query(vector / norm if norm else vector, k, self.ann, self.catalog,
                         conditions=filters).results

    # the text collection and image → text matching

    def add_texts(self, records: Sequence[TextRecord | str]) -> TextsSummary:
        """Embed texts into the index's collection (deduplicated by exact text)."""
        records = [TextRecord(r) if isinstance(r, str) else r for r in records]
        records = [replace(r, text=check_text_value(r.text, f"text {n}")) for n, r in enumerate(records, 1)]
        long = sum(1 for r in records if not self.encoder.fits_context(r.text))
        vectors = np.concatenate([self.encoder.encode_texts([r.text for r in records[start:start + TEXT_BATCH]])
                                  for start in range(0, len(records), TEXT_BATCH)]) if records else None
        self._lock.acquire()
        try:
            added = self.catalog.add_texts(records, vectors) if records else []
        finally:
            self._lock.release()
        self._text_index = None
        return TextsSummary(added=len(added), duplicates=len(records) - len(added), longer_than_context=long)

    def texts(self, limit: int | None = None, offset: int = 0) -> list[TextRow]:
        return self.catalog.text_rows(limit=limit, offset=offset)

    def remove_texts(self, ids: Sequence[int] = (), texts: Sequence[str] = (), keys: Sequence[str] = ()) -> int:
        self._lock.acquire()
        try:
            removed = self.catalog.remove_texts(ids, texts, keys)
        finally:
            self._lock.release()
        self._text_index = None
        return removed

    def match(
        self,
        image: QueryImage,
        k: int = 10,
        *,
        recall_k: int = 100,
        rerank: bool = True,
        labels: Sequence[str] | None = None,
    ) -> MatchResponse:
        """The texts that best describe ``image`` (a file, its bytes, or an indexed image's path or id):
        from the index's text collection, or from ad-hoc ``labels`` (zero-shot style)."""
        check_k(k)
        check_k(recall_k, "recall_k")
        self.refresh()
        clock_start = time.perf_counter()
        name, vector, image_id, pixels = self._query_image(image)
        timings = {"encode": round((time.perf_counter() - clock_start) * 1000.0, 3)}
        started = time.perf_counter()
        reranker = self.reranker if rerank else None
        use_scorer = reranker is not None and reranker.changes_order
        wanted = max(k, recall_k) if use_scorer else k
        if labels is not None:
            texts = list(dict.fromkeys(check_text_value(label, f"label {n}") for n, label in enumerate(labels, 1)))
            if not texts:
                raise QueryError("give at least one label")
            scores = self.encoder.encode_texts(texts) @ vector
            order = np.argsort(-scores, kind="stable")[:wanted]
            candidates = [(None, texts[i], float(scores[i])) for i in order]
        else:
            hits = self._texts_ann().search(vector.reshape(1, -1), wanted)[0]
            rows = {row.id: row for row in self.catalog.text_rows([i for i, _ in hits])}
            candidates = [(i, rows[i].text, score) for i, score in hits if i in rows]
            if not candidates and self.catalog.text_count() == 0:
                raise QueryError("the index has no text collection: add one with vtsearch texts add, "
                                 "or give --label / --labels")
        timings["ann"] = round((time.perf_counter() - started) * 1000.0, 3)
        stage1 = np.array([score for _, _, score in candidates], dtype=np.float32)
        order, final = np.arange(len(candidates)), stage1
        if use_scorer and candidates:
            started = time.perf_counter()
            tokens = self.encoder.encode_text_features([text for _, text, _ in candidates]).tokens
            regions = self._match_regions(image_id, pixels)
            output = reranker.rerank_texts(tokens, stage1, regions)
            order, final = output.order, output.final
            timings["rerank"] = round((time.perf_counter() - started) * 1000.0, 3)
        results = [MatchResult(rank=rank, id=candidates[i][0], text=candidates[i][1], score=float(final[i]),
                               stage1_score=float(stage1[i]), stage1_rank=int(i) + 1)
                   for rank, i in enumerate(order[:k], 1)]
        return MatchResponse(image=name, results=results, reranked=use_scorer, timings_ms=timings)

    def _query_image(self, image: QueryImage) -> tuple[str, np.ndarray, int | None, torch.Tensor | None]:
        """(name, unit vector, catalog id or None, pixels or None) of a query image.

        An indexed image (named by id, or by a path the catalog holds) uses its stored
        vector; anything else is decoded and encoded now."""
        config = self.encoder.decode_config()
        if isinstance(image, (bytes, bytearray)):
            pixels = decode_query_bytes(bytes(image), "(upload)", config, self.encoder.preprocess)
            return "(upload)", self.encoder.encode_images(pixels.unsqueeze(0))[0], None, pixels
        given = os.fspath(image) if not isinstance(image, int) else str(image)
        if isinstance(image, int) or (given.isdigit() and not os.path.exists(given)):
            image_id = int(given)
            row = self.catalog.rows([image_id]).get(image_id)
            if row is None:
                raise QueryError(f"no indexed image has id {image_id}")
            return row.path, self.catalog.vectors([image_id], self.manifest.embed_dim)[0], image_id, None
        path = os.path.abspath(os.path.expanduser(given))
        entry = self.catalog.entries([path]).get(path)
        if entry is not None and entry.status == INDEXED:
            return path, self.catalog.vectors([entry.id], self.manifest.embed_dim)[0], entry.id, None
        pixels = decode_query_image(path, config, self.encoder.preprocess)
        return path, self.encoder.encode_images(pixels.unsqueeze(0))[0], None, pixels

    def _match_regions(self, image_id: int | None, pixels) -> torch.Tensor:
        if image_id is not None:
            return self.region_source.regions([image_id])[0]
        grid = self.manifest.regions.grid
        return self.encoder.encode_image_features(pixels.unsqueeze(0), grid).regions[0]

    def _texts_ann(self) -> AnnIndex:
        """The text collection's FAISS index, built in memory from the catalog on first use."""
        revision = self.catalog.texts_revision()
        if self._text_index is None or self._text_index[0] != revision:
            ids, vectors = self.catalog.text_embeddings(self.manifest.embed_dim)
            ann = AnnIndex.empty(self.manifest.embed_dim, AnnConfig())
            ann.add(ids, vectors)
            self._text_index = (revision, ann)
        return self._text_index[1]

    def explain(self, image_id: int, text: str) -> AttentionMap:
        """Where the fusion scorer looks in an indexed image for each token of ``text``:
        the cross-attention weights over the image's regions, mean over layers and heads."""
        text = check_text(text)[:MAX_QUERY_CHARS]
        self.refresh()
        reranker = self.reranker
        if reranker is None:
            raise QueryError("this index has no region features (its encoder has no patch tokens), "
                             "so there is no fusion scorer to explain")
        row = self.catalog.rows([image_id]).get(image_id)
        if row is None:
            raise QueryError(f"no indexed image has id {image_id}")
        features = self.encoder.encode_text_features([text])
        tokens = features.tokens[0]  # (T, D)
        stage1 = float(self.catalog.vectors([image_id], self.manifest.embed_dim)[0] @ features.vectors[0])
        output = reranker.rerank(tokens, np.array([stage1], dtype=np.float32),
                                 self.region_source.regions([image_id]), need_weights=True)
        weights = torch.stack(output.attention).mean(dim=0)[0]  # layers × (1, T, R) → (T, R)
        return AttentionMap(
            image_id=image_id, text=text, tokens=self.encoder.token_strings(text, len(tokens)),
            weights=weights.tolist(), grid=self.manifest.regions.grid,
            crop=self.encoder.region_crop(row.width, row.height), stage1_score=stage1,
            match_logit=float(output.match_logit[0]), score=float(output.final[0]),
            reranks=reranker.changes_order,
        )

    def errors(self) -> list[ErrorRecord]:
        return self.catalog.errors()

    def check(self, repair: bool = False) -> CheckReport:
        """Check that catalog, FAISS index and region store agree; ``repair`` fixes drift.

        Takes the writer lock, so the parts do not move while they are compared.
        """
        self._lock.acquire()
        try:
            self._sync_region_store()
            saved, problem = self._read_ann_file()  # the file as it is, not a rebuilt copy
            findings = inspect(self.catalog, saved or _placeholder_ann(self.manifest),
                               self.manifest.embed_dim, self._region_store)
            if saved is None:
                findings.problem("ann", f"{self.path / ANN} {problem}")
                findings.rebuild_ann = True
            if repair:
                self._repair(findings)
        finally:
            self._lock.release()
        return findings.report

    def _repair(self, findings: Findings) -> None:
        report = findings.report
        for temp in remove_stale_temps(self.path):
            report.repaired.append(f"deleted {temp.name}, left by an interrupted write")
        if findings.cut_region_tail:
            self._region_store.cut_torn_tail()
            report.repaired.append("cut the torn row off the end of the region store")
        by_loss: dict[str, list[int]] = {}
        for row_id, what in findings.reencode.items():
            by_loss.setdefault(what, []).append(row_id)
        for what, ids in by_loss.items():
            self.catalog.mark_for_reencoding(ids, LOST.format(what=what))
            report.repaired.append(f"marked {len(ids)} images whose {what} were lost for re-encoding")
        if findings.rebuild_ann or findings.reencode:
            self.ann = self._rebuild_ann()
            self._save_ann()
            report.repaired.append(f"rebuilt ann.faiss from the catalog ({len(self.ann)} vectors)")
        if self._region_store is not None:
            if report.dead_region_rows or findings.reencode:
                dropped = self._compact_regions_locked()
                report.repaired.append(f"compacted the region store ({dropped} unused rows dropped)")
            for name in self._remove_stale_region_files():
                report.repaired.append(f"deleted {name}, left by an interrupted compaction")

    def info(self) -> IndexInfo:
        return IndexInfo(
            path=str(self.path.resolve()),
            images=self.catalog.count(INDEXED),
            errors=self.catalog.count(ERROR),
            ann_vectors=len(self.ann),
            manifest=self.manifest.to_dict(),
            texts=self.catalog.text_count(),
            catalog=self.catalog.location,
        )


def _region_layout(encoder: Encoder, store: bool, grid: int | None) -> RegionLayout | None:
    native = encoder.native_grid
    if native is None:
        log.warning("%s has no region tokens: searches will not be reranked", encoder.spec.describe())
        return None
    side = min(native)
    grid = min(grid or DEFAULT_REGION_GRID, side)
    return RegionLayout(grid=grid, dim=encoder.embed_dim, stored=store)


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, or None: an atomic replace changes the inode."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _use_gpu(device: str) -> bool:
    return device != "cpu" and gpu_count() > 0


def _placeholder_ann(manifest: Manifest) -> AnnIndex:
    """An empty exact index, until the real one is loaded or built."""
    return AnnIndex.empty(manifest.embed_dim, AnnConfig())


def _same_encoder(stored: EncoderSpec, requested: EncoderSpec) -> bool:
    if stored.model != requested.model:
        return False
    return not requested.pretrained or requested.pretrained == stored.pretrained


def _mismatch_message(path: Path, stored: EncoderSpec, requested: EncoderSpec) -> str:
    return (
        f"index {path} was built with {stored.describe()}, not {requested.describe()}; "
        "omit --model to use the index's own model, or choose another --index"
    )
