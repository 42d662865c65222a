"""``Index``: one object owns one index directory (its files: :mod:`vtsearch.store.layout`);
each method hands its work to the build path (:mod:`vtsearch.build`), the query path
(:mod:`vtsearch.query`) or the store (:mod:`vtsearch.store`).

Writers (``add``) take the lock; readers (``search``) never do. The encoder is loaded
on first use, or passed in (tests pass small real ones).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from .build import pipeline
from .build.local import LocalEngine
from .config import AnnConfig, EncoderSpec, IngestOptions, RegionLayout, Tuning
from .device import resolve_device
from .encoder import Encoder
from .encoder.coca import broken_contrastive_head, has_text_decoder
from .encoder.weights import check_weights
from .errors import IndexLockedError, ModelLoadError, ModelMismatchError
from .filters import SearchFilter
from .fusion import FusionConfig
from .progress import Progress
from .query import explain, match, search
from .query.context import QueryContext
from .query.decoder import SCORER as DECODER_SCORER
from .query.decoder import DecoderConfig, DecoderReranker
from .query.images import QueryImage
from .query.readcache import ReadCache, remove_read_files
from .query.rerank import Reranker, Stage2
from .query.sources import ComputedRegions, RegionSource, StoredRegions
from .query.texts import check_text_value, encode_texts
from .records import (
    AttentionMap, ErrorRecord, ImageRow, IndexInfo, IngestSummary, MatchResponse, RemoveSummary, RerankerSummary,
    SearchResponse, SearchResult, TextRecord, TextRow, TextsSummary,
)
from .store import Store
from .store.ann import Hits, gpu_count
from .store.catalog import INDEXED, Catalog
from .store.check import CheckReport
from .store.layout import MANIFEST, RERANKER_FILE, bytes_digest
from .store.manifest import Manifest

if TYPE_CHECKING:
    from .build.distributed import RayOptions

log = logging.getLogger(__name__)

__all__ = ["Index", "IndexInfo", "RemoveSummary", "TextsSummary", "QueryImage"]


class Index:
    """An image index on disk: catalog, FAISS index, region store and manifest."""

    def __init__(self, store: Store, device: str = "auto", encoder: Encoder | None = None, precision: str = "auto"):
        self.store = store
        self.device = device
        self.precision = precision  # how a loaded encoder computes (vtsearch.encoder.precision)
        self._encoder = encoder
        self._reranker: Stage2 | None = None
        self._read_cache: ReadCache | None = None
        self._texts = match.TextIndex(store.catalog, store.manifest.embed_dim)

    # lifecycle

    @classmethod
    def create(cls, path: str | os.PathLike[str], spec: EncoderSpec | None = None, device: str = "auto",
               encoder: Encoder | None = None, ann_config: AnnConfig | None = None, store_regions: bool = True,
               region_grid: int | None = None, catalog_url: str | None = None,
               tuning: Tuning | None = None, precision: str = "auto") -> "Index":
        """Create a new, empty index at ``path`` (the folder may exist but hold no index).

        Region features are kept for reranking unless ``store_regions`` is false, in which
        case they are computed for each shortlist at query time instead. With a CoCa model
        they are its image tokens before the attentional pooler, and stage 2 is CoCa's own
        text decoder (no training needed). ``catalog_url``
        puts the catalog in a PostgreSQL database (empty, or holding only what a create
        that died left) instead of ``DIR/catalog.sqlite``.
        """
        path = Path(path)
        Store.refuse_existing(path)
        refused = broken_contrastive_head(encoder.spec if encoder is not None else spec or EncoderSpec())
        if refused:
            raise ModelLoadError(refused)
        encoder = encoder or Encoder.load(spec or EncoderSpec(), resolve_device(device), precision)
        layout, scorer = _stage2_layout(encoder, store_regions, region_grid)

        def describe(catalog: Catalog) -> Manifest:
            return Manifest(encoder=encoder.spec, embed_dim=encoder.embed_dim,
                            preprocess=encoder.describe()["preprocess"], ann=ann_config or AnnConfig(),
                            regions=layout, reranker=scorer, encoder_probe=encoder.probe_vector(),
                            catalog=catalog.location if catalog.on_server else None)

        return cls(Store.create(path, describe, catalog_url, _use_gpu(device), tuning), device, encoder, precision)

    @classmethod
    def open(cls, path: str | os.PathLike[str], device: str = "auto", encoder: Encoder | None = None,
             rebuild_stale: bool = True, tuning: Tuning | None = None, precision: str = "auto") -> "Index":
        """Open an existing index; a missing or stale FAISS index is rebuilt from the catalog
        (unless ``rebuild_stale`` is false: ``vtsearch check`` wants to see it as it is)."""
        store = Store.open(Path(path), _use_gpu(device), tuning)
        if encoder is not None and encoder.spec != store.manifest.encoder:
            store.close()
            raise _encoder_mismatch(store.path, store.manifest.encoder, encoder.spec)
        store.ann.load(rebuild_stale)
        return cls(store, device, encoder, precision)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], spec: EncoderSpec | None = None, device: str = "auto",
                       encoder: Encoder | None = None, store_regions: bool = True, region_grid: int | None = None,
                       catalog_url: str | None = None, tuning: Tuning | None = None,
                       precision: str = "auto") -> "Index":
        """Open the index at ``path``, checking ``spec`` (and ``catalog_url``) against it,
        or create it."""
        path = Path(path)
        if not Store.exists(path):
            return cls.create(path, spec, device, encoder, store_regions=store_regions, region_grid=region_grid,
                              catalog_url=catalog_url, tuning=tuning, precision=precision)
        manifest = Manifest.load(path / MANIFEST)
        if spec is not None and not manifest.encoder.accepts(spec):
            raise _encoder_mismatch(path, manifest.encoder, spec)
        if catalog_url is not None:
            Store.check_catalog_url(path, manifest, catalog_url)
        return cls.open(path, device, encoder, tuning=tuning, precision=precision)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # the parts, read-only

    path = property(lambda self: self.store.path)
    manifest = property(lambda self: self.store.manifest)
    catalog = property(lambda self: self.store.catalog)
    ann = property(lambda self: self.store.ann.ann)
    embed_dim = property(lambda self: self.store.manifest.embed_dim)
    regions = property(lambda self: self.store.manifest.regions, doc="RegionLayout | None")

    def __len__(self) -> int:
        """Vectors in the FAISS index."""
        return len(self.store.ann.ann)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            encoder = Encoder.load(self.manifest.encoder, resolve_device(self.device), self.precision)
            check_weights(encoder, self.embed_dim, self.manifest.encoder_probe, self.path)
            self._encoder = encoder
        return self._encoder

    @property
    def region_source(self) -> RegionSource | None:
        """Where the reranker gets regions; None when the encoder has none."""
        if self.regions is None:
            return None
        if self.store.regions.store is not None:
            return StoredRegions(self.store.regions.store, self.catalog)
        return ComputedRegions(self.encoder, self.catalog, self.regions)

    @property
    def reranker(self) -> Stage2 | None:
        """The trained scorer from ``reranker.pt``; else, for a CoCa index, CoCa's text
        decoder; else an untrained fusion scorer (stage-1 order)."""
        if self.regions is None:
            return None
        if self._reranker is None:
            device = resolve_device(self.device)
            summary = self.manifest.reranker
            if (self.path / RERANKER_FILE).is_file():
                self._reranker = Reranker.load(self.path / RERANKER_FILE, device, self.encoder.precision)
            elif summary is not None and summary.scorer == DECODER_SCORER:
                self._reranker = DecoderReranker(self.encoder.model, DecoderConfig.from_dict(summary.config))
            else:
                config = FusionConfig(text_dim=self.encoder.text_token_dim, region_dim=self.regions.dim,
                                      grid=self.regions.grid, prefix=self.regions.prefix,
                                      max_tokens=self.encoder.context_length)
                self._reranker = Reranker.untrained(config, device=device, precision=self.encoder.precision)
        return self._reranker

    @property
    def read_cache(self) -> ReadCache | None:
        """The images as the trained fusion scorer reads them (:mod:`vtsearch.query.readcache`);
        None without such a scorer, or without a region store."""
        reranker = self.reranker
        store = self.store.regions.store
        if not _keeps_reads(reranker) or store is None:
            return None
        if self._read_cache is None or self._read_cache.reranker is not reranker:
            self._read_cache = ReadCache(self.path, self.catalog, reranker, StoredRegions(store, self.catalog))
        return self._read_cache

    def save_reranker(self, reranker: Reranker, progress: Progress | None = None) -> None:
        """Keep a trained fusion scorer in the index (it survives later ``add`` runs, and
        takes the place of a CoCa index's decoder), and every image as it reads them."""
        with self.store.writing():
            reranker.save(self.path / RERANKER_FILE)
            manifest = self.store.manifest_file.reload()  # another writer may have saved it
            summary = RerankerSummary.from_dict({"config": reranker.scorer.config.to_dict(), **reranker.trained})
            self.store.manifest_file.save(replace(manifest, reranker=summary))
            self._reranker = reranker
            self._keep_read_images(progress)

    def _keep_read_images(self, progress: Progress | None = None) -> None:
        """Top up the read-image file of the scorer in ``reranker.pt``, and delete any
        other (lock held). The scorer is the file's, not what this object loaded before
        (another process may have saved a new one since); the images are read in float32
        whatever the precision, so it is loaded without the encoder."""
        self.store.regions.sync()
        store, path = self.store.regions.store, self.path / RERANKER_FILE
        reranker = self._reranker if isinstance(self._reranker, Reranker) else None
        if not path.is_file():
            reranker = None
        else:
            data = path.read_bytes()  # read once: hashed, and loaded when it is not the scorer held
            if reranker is None or reranker.digest != bytes_digest(data):
                reranker = Reranker.load(path, resolve_device(self.device), data=data)
        if not _keeps_reads(reranker) or store is None:
            remove_read_files(self.path)
            return
        ReadCache(self.path, self.catalog, reranker, StoredRegions(store, self.catalog)).top_up(progress)

    def refresh(self) -> bool:
        """Pick up what another process wrote since this one looked: a newer ``ann.faiss``
        (after an ``index`` run) or manifest (a trained reranker). Cheap when nothing
        changed; every query calls it. Returns True when something was reloaded."""
        manifest_changed, reloaded = self.store.refresh()
        if manifest_changed:
            self._reranker = self._read_cache = None
        return reloaded

    # writing

    def add(self, paths: Iterable[str | bytes | os.PathLike], options: IngestOptions | None = None,
            progress: Progress | None = None, ray: "RayOptions | None" = None,
            engine: pipeline.Engine | None = None) -> IngestSummary:
        """Index the image files under ``paths``; returns what happened to them.

        ``ray``: encode on a pool of Ray actors (:mod:`vtsearch.build.distributed`) instead of
        in this process; the result is the same. ``engine``: another engine, passed in."""
        if engine is None and ray is not None:
            from .build.distributed import RayEngine  # Ray code is imported only when asked for

            spec = replace(self.manifest.encoder, precision=self.precision)  # the workers compute as asked
            engine = RayEngine(self.path, spec, self.device, ray, self.manifest.encoder_probe)
        engine = engine or LocalEngine(lambda: self.encoder)
        summary = pipeline.add(self.store, engine, paths, options or IngestOptions(), progress)
        self._after_writing()
        return summary

    def remove(self, paths: Iterable[str | bytes | os.PathLike]) -> RemoveSummary:
        """Remove files (or everything under folders) from the index, whether or not
        they still exist on disk."""
        summary = pipeline.remove(self.store, paths)
        self._after_writing()
        return summary

    def compact_regions(self) -> int:
        """Copy the live region rows to a new file and drop the old one; returns the rows
        dropped. Searches keep reading the old file until the catalog points at the new."""
        dropped = self.store.compact_regions()
        self._after_writing()
        return dropped

    def _after_writing(self) -> None:
        """What the trained scorer keeps follows the region store (new rows, a compaction).
        It is derived data: when this fails (another writer took the lock in between, who
        tops it up when it ends; a damaged ``reranker.pt``; a full disk) the write that
        came before stands, and queries read what the file lacks from the regions."""
        if (self.path / RERANKER_FILE).is_file() and self.store.regions.store is not None:
            try:
                with self.store.writing():
                    self._keep_read_images()
            except IndexLockedError:
                log.info("another writer holds %s; it will top up the images kept for the scorer", self.path)
            except Exception as error:  # noqa: BLE001 - derived data must not fail the write
                log.warning("could not keep the images as the scorer reads them in %s: %s", self.path, error)

    def rebuild(self, on_disk: bool | None = None) -> AnnConfig:
        """Retrain the FAISS index from the catalog for the collection's current size and
        swap it in atomically; searches use the old one until the swap. Returns its config.

        ``on_disk``: from now on build IVF indexes from shards merged into a memory-mapped
        data file (True), or in memory (False); None keeps the current choice.
        """
        return self.store.rebuild(on_disk)

    def check(self, repair: bool = False) -> CheckReport:
        """Check that catalog, FAISS index and region store agree; ``repair`` fixes drift."""
        report = self.store.check(repair)
        if repair:
            self._after_writing()  # a repair may compact the region store
        return report

    # reading

    def _context(self) -> QueryContext:
        self.refresh()
        return QueryContext(self.catalog, self.ann, self.embed_dim, self.regions,
                            self.store.ann.tuning.exact_filter_limit, lambda: self.encoder,
                            lambda: self.reranker, lambda: self.region_source, lambda: self.read_cache)

    def query(self, text: str | None = None, *, image: QueryImage | None = None, k: int = 10,
              recall_k: int | None = None, rerank: bool = True, filters: SearchFilter | None = None,
              deduplicate: bool = False) -> SearchResponse:
        """Search by text (reranked) or by example image (stage 1), with timings.

        ``image``: a file's path, its bytes (an upload), or an indexed image's id.
        ``filters`` restricts the results to images that meet its conditions;
        ``deduplicate`` drops near-duplicates of better ranked results."""
        context = self._context()
        request = search.SearchRequest(text=text, image=image, k=k, rerank=rerank, filters=filters,
                                       recall_k=context.shortlist(recall_k, text is not None and rerank),
                                       deduplicate=deduplicate)
        return search.search(context, request)

    def search(self, query: str | os.PathLike[str], k: int = 10, *, image: bool = False, recall_k: int | None = None,
               rerank: bool = True, filters: SearchFilter | None = None) -> list[SearchResult]:
        """Search by text, or by example when ``image`` is true (``query`` is then a path)."""
        if image:
            return self.query(image=query, k=k, filters=filters).results
        return self.query(str(query), k=k, recall_k=recall_k, rerank=rerank, filters=filters).results

    def search_text(self, text: str, k: int = 10, recall_k: int | None = None, rerank: bool = True,
                    filters: SearchFilter | None = None) -> list[SearchResult]:
        return self.query(text, k=k, recall_k=recall_k, rerank=rerank, filters=filters).results

    def search_image(self, path: QueryImage, k: int = 10, filters: SearchFilter | None = None) -> list[SearchResult]:
        return self.query(image=path, k=k, filters=filters).results

    def search_vector(self, vector: np.ndarray, k: int = 10, filters: SearchFilter | None = None,
                      deduplicate: bool = False) -> list[SearchResult]:
        """Search with a query vector in the encoder's space (normalised here)."""
        request = search.SearchRequest(vector=vector, k=k, filters=filters, deduplicate=deduplicate)
        return search.search(self._context(), request).results

    def match(self, image: QueryImage, k: int = 10, *, recall_k: int | None = None, rerank: bool = True,
              labels: Sequence[str] | None = None) -> MatchResponse:
        """The texts that best describe ``image`` (a file, its bytes, or an indexed image's path or id):
        from the index's text collection, or from ad-hoc ``labels`` (zero-shot style)."""
        context = self._context()
        request = match.MatchRequest(image=image, k=k, recall_k=context.shortlist(recall_k, rerank), rerank=rerank,
                                     labels=labels)
        return match.match(context, self._texts, request)

    def rerank_texts(self, image_id: int, texts: list[str], stage1: np.ndarray) -> np.ndarray | None:
        """The order (best first) the scorer gives candidate ``texts`` for an indexed image,
        whose stage-1 similarities are ``stage1``; None when it would keep stage-1 order."""
        context = self._context()
        scorer = context.scorer(True)
        if scorer is None:
            return None
        reranker, region_source = scorer
        order, _final = match.rank_texts(reranker, context, texts, stage1, region_source.regions([image_id])[0])
        return order

    def explain(self, image_id: int, text: str) -> AttentionMap:
        """Where the fusion scorer looks in an indexed image for each token of ``text``:
        the cross-attention weights over the image's regions, mean over layers and heads."""
        return explain.explain(self._context(), image_id, text)

    # the text collection

    def add_texts(self, records: Sequence[TextRecord | str]) -> TextsSummary:
        """Embed texts into the index's collection (deduplicated by exact text)."""
        records = [TextRecord(r) if isinstance(r, str) else r for r in records]
        records = [replace(r, text=check_text_value(r.text, f"text {n}")) for n, r in enumerate(records, 1)]
        long = sum(1 for r in records if not self.encoder.fits_context(r.text))
        vectors = encode_texts(self.encoder, [r.text for r in records])
        with self.store.writing():
            added = self.catalog.add_texts(records, vectors) if records else []
        return TextsSummary(added=len(added), duplicates=len(records) - len(added), longer_than_context=long)

    def texts(self, limit: int | None = None, offset: int = 0) -> list[TextRow]:
        return self.catalog.text_rows(limit=limit, offset=offset)

    def text_count(self) -> int:
        return self.catalog.text_count()

    def text_collection(self) -> tuple[list[str], np.ndarray]:
        """The collection's texts and their (n, D) unit vectors, in id order."""
        _ids, vectors = self.catalog.text_embeddings(self.embed_dim)
        return [row.text for row in self.texts()], vectors

    def remove_texts(self, ids: Sequence[int] = (), texts: Sequence[str] = (), keys: Sequence[str] = ()) -> int:
        with self.store.writing():
            return self.catalog.remove_texts(ids, texts, keys)

    # what the catalog holds

    def image_ids(self, paths: Sequence[str]) -> dict[str, int]:
        """Catalog ids of the successfully indexed images among ``paths`` (absolute)."""
        entries = self.catalog.entries(list(paths))
        return {path: entry.id for path, entry in entries.items() if entry.status == INDEXED}

    def image_row(self, image_id: int) -> ImageRow | None:
        return self.catalog.rows([image_id]).get(image_id)

    def image_rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        return self.catalog.rows(ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(n, D) stored unit vectors of indexed images, in the order of ``ids``."""
        return self.catalog.vectors(ids, self.embed_dim)

    def embeddings(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every indexed image's (ids, vectors), in chunks."""
        return self.catalog.embeddings(self.embed_dim)

    def neighbours(self, vectors: np.ndarray, depth: int) -> list[Hits]:
        """Stage-1 hits (id, cosine) of each query vector, best first."""
        return self.ann.search(vectors, depth)

    def errors(self) -> list[ErrorRecord]:
        return self.catalog.errors()

    def info(self) -> IndexInfo:
        return self.store.info()


def _stage2_layout(encoder: Encoder, store_regions: bool,
                   region_grid: int | None) -> tuple[RegionLayout | None, RerankerSummary | None]:
    """How a new index keeps regions (``Encoder.region_layout``), and the scorer it starts
    with: a CoCa model's text decoder; for another model none until one is trained."""
    layout = encoder.region_layout(store_regions, region_grid)
    if layout is None:
        log.warning("%s has no regions (%s): searches will not be reranked", encoder.spec.describe(),
                    encoder.regions_unavailable)
        return None, None
    if not has_text_decoder(encoder.model):
        return layout, None
    return layout, RerankerSummary(config=DecoderConfig().to_dict(), scorer=DECODER_SCORER)


def _keeps_reads(reranker: Stage2 | None) -> bool:
    """Whether the index keeps its images as ``reranker`` reads them: a fusion scorer saved
    in a file (the reads are keyed by its digest) whose ``w`` lets it change the order."""
    return isinstance(reranker, Reranker) and reranker.digest is not None and reranker.changes_order


def _use_gpu(device: str) -> bool:
    return device != "cpu" and gpu_count() > 0


def _encoder_mismatch(path: Path, stored: EncoderSpec, requested: EncoderSpec) -> ModelMismatchError:
    return ModelMismatchError(f"index {path} was built with {stored.describe()}, not {requested.describe()}",
                              path=str(path), stored=stored.describe(), requested=requested.describe())

