"""Distributed embedding on Ray: ``vtsearch index PATH --engine ray``.

The driver (the process that runs ``vtsearch index``) does what a local run does before
and after encoding: it scans, plans against the catalog, and commits. Only the decoding
and encoding, the part that needs many machines, runs on a pool of Ray actors:

1. the files to encode, in the local run's order, are cut into shards of whole batches;
2. each shard goes to an actor, which holds the model (loaded once per actor), decodes
   and encodes the shard's files batch by batch exactly as a local run would, and writes
   the vectors (float32) and regions (the region store's fp16) to one shard file in
   ``DIR/shards/``, atomically;
3. the driver commits the shards strictly in order, batch by batch (regions appended
   durably, then one catalog transaction per batch, then FAISS) and deletes each shard
   file once committed.

So the catalog sees the same batches in the same order as a local run: the same ids and
the same vectors. Actors rather than Ray Data's ``map_batches``: each shard must become
one durable file named by its content, and the commit order must be the plan's; an actor
pool gives both directly, with the model loaded once per actor and no dataset layer.

Resuming: a shard's file is named by a hash of its files (path, size, mtime) and of
everything that shapes its output (encoder, batch size, decode options, region layout). A worker
that dies is restarted by Ray and its shard retried; a driver that dies leaves committed
batches in the catalog (a new run does not encode them again) and finished shard files
on disk (a new run whose plan has the same shard commits the file without encoding it).
A resumed run holds the same rows and vectors as an uninterrupted one; its ids may be
numbered in another order (files that failed are planned again, which can move the
remaining batches' boundaries).

Every host reads the images and the index folder at the same paths (shared storage), and
loads the encoder itself (a ``local-dir:`` model must be at the same path on each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..config import EncoderSpec, IngestOptions, RegionLayout
from ..errors import NotEnoughGpusError, RayNotInstalledError, VtsearchError
from ..progress import NoProgress, Progress
from ..records import DecodedImage, DecodeFailure, IngestSummary, ScannedFile
from ..store.ann import AnnIndex
from ..store.atomic import atomic_path
from ..store.catalog import Catalog, CatalogEntry
from ..store.regions import RegionStore
from .local import EncodedBatch, commit_batch, prepare

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
DEFAULT_SHARD_BATCHES = 8  # batches per shard
RAY_INSTALL = "pip install 'vtsearch[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """How ``--engine ray`` runs: which cluster, how many actors, what each holds."""

    address: str | None = None  # None: RAY_ADDRESS, or a new local instance
    workers: int | None = None  # actors (None: one per CPU, or per GPU share, of the cluster)
    num_gpus_per_worker: float = 0.0
    num_cpus_per_worker: float = 1.0
    shard_batches: int = DEFAULT_SHARD_BATCHES


@dataclass(frozen=True)
class Shard:
    number: int
    key: str  # names its file: a hash of its files and of the run's settings
    files: tuple[ScannedFile, ...]


def shards(files: Sequence[ScannedFile], batch_size: int, shard_batches: int, settings: dict[str, Any]) -> list[Shard]:
    """Cut the plan into shards of whole batches (a local run's batch boundaries)."""
    size = batch_size * shard_batches
    salt = json.dumps(settings, sort_keys=True)
    cut = []
    for number, start in enumerate(range(0, len(files), size)):
        part = tuple(files[start:start + size])
        digest = hashlib.sha256(salt.encode())
        for scanned in part:
            record = f"\0{scanned.path}\0{scanned.size}\0{scanned.mtime_ns}"
            digest.update(record.encode("utf-8", "surrogateescape"))  # a name's own bytes, UTF-8 or not
        cut.append(Shard(number, digest.hexdigest()[:32], part))
    return cut


# the shard file: arrays and one JSON record per file, in the shard's order


def write_shard(path: Path, batches: Sequence[EncodedBatch]) -> None:
    records: list[dict[str, Any]] = []
    vectors, regions = [], []
    for batch in batches:
        for image in batch.decoded:
            records.append({"ok": True, **asdict(image.source), "width": image.width, "height": image.height,
                            "format": image.format, "hash": image.content_hash, "read": image.size})
        for failure in batch.failures:
            records.append({"ok": False, **asdict(failure.source), "reason": failure.reason,
                            "hash": failure.content_hash})
        records.append({"end_of_batch": True})
        vectors.append(batch.embeddings)
        if batch.regions is not None:
            regions.append(batch.regions)
    arrays = {"records": np.frombuffer(json.dumps(records).encode(), dtype=np.uint8),
              "vectors": np.concatenate(vectors) if vectors else np.empty((0, 0), np.float32)}
    if regions:
        arrays["regions"] = np.concatenate(regions)
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())


def read_shard(path: Path) -> Iterator[EncodedBatch]:
    """The shard's batches as the local run made them (pixels are not kept)."""
    with np.load(path) as data:
        records = json.loads(data["records"].tobytes())
        vectors = data["vectors"]
        regions = data["regions"] if "regions" in data.files else None
    row = 0
    decoded: list[DecodedImage] = []
    failures: list[DecodeFailure] = []
    for record in records:
        if record.get("end_of_batch"):
            count = len(decoded)
            yield EncodedBatch(decoded, failures, vectors[row:row + count].astype(np.float32),
                               None if regions is None else regions[row:row + count])
            row += count
            decoded, failures = [], []
            continue
        source = ScannedFile(record["path"], record["size"], record["mtime_ns"])
        if record["ok"]:
            decoded.append(DecodedImage(source, None, record["width"], record["height"], record["format"],
                                        record["hash"], record["read"]))
        else:
            failures.append(DecodeFailure(source, record["reason"], record["hash"]))


class EncodeWorker:
    """A Ray actor: one encoder, loaded once, encoding whole shards into shard files."""

    def __init__(self, spec: dict[str, Any], device: str, options: IngestOptions, regions: dict[str, Any] | None,
                 threads: int, probe: list[float] | None):
        import torch

        from ..device import resolve_device
        from ..encoder import Encoder
        from ..encoder.weights import check_probe

        torch.set_num_threads(max(1, threads))
        encoder_spec = EncoderSpec.from_dict(spec)  # its precision: what this run asks for
        self.encoder = Encoder.load(encoder_spec, resolve_device(device), encoder_spec.precision or "auto")
        check_probe(self.encoder, probe, "on this Ray worker")
        self.options = options
        self.layout = RegionLayout.from_dict(regions) if regions is not None else None
        self.decode_config = self.encoder.decode_config(max_pixels=options.max_pixels,
                                                        allow_truncated=options.allow_truncated)

    def encode_shard(self, shard: Shard, folder: str) -> str:
        from ..decode import decode_batches
        from .local import encode_batch

        path = Path(folder) / f"{shard.key}.npz"
        if path.is_file():  # finished before a restart: the file is complete (atomic)
            return str(path)
        batches = []
        for batch in decode_batches(list(shard.files), self.decode_config, self.encoder.preprocess,
                                    self.options.batch_size, 0):
            encoded = encode_batch(batch, self.encoder, self.layout)
            if encoded.regions is not None:
                encoded.regions = encoded.regions.astype(np.dtype(self.layout.dtype))
            batches.append(encoded)
        write_shard(path, batches)
        return str(path)


def ingest_ray(
    paths: Sequence[str],
    folder: Path,
    catalog: Catalog,
    ann: AnnIndex,
    spec: EncoderSpec,
    device: str,
    options: IngestOptions,
    ray_options: RayOptions,
    progress: Progress | None = None,
    region_store: RegionStore | None = None,
    probe: list[float] | None = None,
    worker_class: type | None = None,
) -> IngestSummary:
    """:func:`vtsearch.build.local.ingest` with the encoding done by Ray actors (each checks
    its encoder against ``probe``, the manifest's probe vector). ``worker_class``: the
    actor class, :class:`EncodeWorker` or a subclass."""
    ray = _import_ray()
    started = time.perf_counter()
    progress = progress or NoProgress()
    to_decode, known, summary = prepare(paths, catalog, ann, options)
    regions = region_store.layout.to_dict() if region_store is not None else None
    settings = {"encoder": spec.to_dict(), "batch_size": options.batch_size, "regions": regions,
                "max_pixels": options.max_pixels, "allow_truncated": options.allow_truncated}
    plan = shards(to_decode, options.batch_size, ray_options.shard_batches, settings)
    shard_dir = folder / SHARDS_DIR
    shard_dir.mkdir(exist_ok=True)
    progress.start(len(to_decode))
    try:
        if plan:
            _connect(ray, ray_options)
            pool = _actor_pool(ray, ray_options, spec, device, options, regions, len(plan), probe,
                               worker_class or EncodeWorker)
            done = pool.map(lambda actor, shard: actor.encode_shard.remote(shard, str(shard_dir)), plan)
            for shard in plan:
                try:
                    shard_file = next(done)
                except ray.exceptions.RayError as error:
                    raise VtsearchError(
                        f"a Ray worker failed on shard {shard.number} of {len(plan)} ({_first_line(error)}); "
                        "what was committed stays: run the same command again to go on"
                    ) from None
                _commit_shard(Path(shard_file), catalog, ann, region_store, known, summary)
                progress.advance(len(shard.files))
    finally:
        progress.close()
    shutil.rmtree(shard_dir, ignore_errors=True)  # what is left belongs to no plan
    summary.seconds = time.perf_counter() - started
    return summary


def _commit_shard(path: Path, catalog: Catalog, ann: AnnIndex, region_store: RegionStore | None,
                  known: dict[str, CatalogEntry], summary: IngestSummary) -> None:
    for batch in read_shard(path):
        commit_batch(batch, catalog, ann, region_store, known, summary)
    path.unlink()


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(f"Ray is not installed: {RAY_INSTALL}", install=RAY_INSTALL) from None
    return ray


def _connect(ray, options: RayOptions) -> None:
    if ray.is_initialized():
        return
    ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)


def _actor_pool(ray, options: RayOptions, spec: EncoderSpec, device: str, ingest_options: IngestOptions,
                regions: dict[str, Any] | None, shard_count: int,
                probe: list[float] | None, worker_class: type):
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    if options.workers:
        count = options.workers
    elif options.num_gpus_per_worker:
        count = int(resources.get("GPU", 0) / options.num_gpus_per_worker)
    else:
        count = int(resources.get("CPU", 1) / options.num_cpus_per_worker)
    count = max(1, min(count, shard_count))
    if options.num_gpus_per_worker and resources.get("GPU", 0) < options.num_gpus_per_worker:
        available = resources.get("GPU", 0)
        raise NotEnoughGpusError(f"the Ray cluster has {available:g} GPUs, fewer than the "
                                 f"{options.num_gpus_per_worker:g} each worker asks for",
                                 available=available, per_worker=options.num_gpus_per_worker)
    actor_class = ray.remote(
        num_cpus=options.num_cpus_per_worker, num_gpus=options.num_gpus_per_worker,
        max_restarts=3, max_task_retries=3,
    )(worker_class)
    worker_device = "cuda" if options.num_gpus_per_worker else ("cpu" if device == "auto" else device)
    threads = max(1, int(options.num_cpus_per_worker))
    log.info("encoding %d shards on %d Ray actors", shard_count, count)
    return ActorPool([actor_class.remote(spec.to_dict(), worker_device, ingest_options, regions, threads, probe)
                      for _ in range(count)])


class RayEngine:
    """The build path's engine on a Ray cluster (``vtsearch index --engine ray``)."""

    def __init__(self, folder: Path, spec: EncoderSpec, device: str, options: RayOptions,
                 probe: list[float] | None, worker_class: type | None = None):
        self.folder = folder
        self.spec = spec
        self.device = device
        self.options = options
        self.probe = probe
        self.worker_class = worker_class

    def ingest(self, paths: Sequence[str], catalog: Catalog, ann: AnnIndex, options: IngestOptions,
               progress: Progress | None, region_store: RegionStore | None) -> IngestSummary:
        return ingest_ray(paths, self.folder, catalog, ann, self.spec, self.device, options, self.options,
                          progress, region_store, self.probe, self.worker_class)
