#!/usr/bin/env python3
"""Beyond one machine, measured on this one: Ray embedding and the on-disk IVF merge.

Part 1, ``embed``: the same images indexed three ways, one after the other, with the same
model (open_clip ViT-B-32, random weights: the cost of the pretrained model, nothing
downloaded), each into a fresh index:

- ``local``: ``Index.add`` in this process (decoding in worker processes);
- ``ray_1`` and ``ray_2``: ``--engine ray`` with 1 and 2 actors on a local Ray instance
  (``ray.init(num_cpus=2)``), each actor decoding and encoding whole shards;

images/s for each, and each Ray rate ÷ the local one. Ray's start-up (the instance, the
actors loading the model) is inside the timed run, as a user pays it.

Part 2, ``merge``: 1M synthetic CLIP-like vectors (d=512, unit length, clustered) built
into ``IVF1024,SQ4`` by the steps of :mod:`vtsearch.store.ondisk` — trained on 40,960 of them,
added in shards of 100,000 by 2 threads, the shards' lists merged into one memory-mapped
file — in a fresh process that never holds the vectors at once (they are generated chunk
by chunk). For each step: its time and the peak of the process's anonymous memory above
where it started (what must fit in RAM; pages of mapped files are page cache the kernel
can drop), sampled every 20 ms; the process's peak RSS with mapped pages; the index's
size on disk; search latency and recall@10 against exact search at several ``nprobe``,
ranking by the 4-bit codes alone, and re-scoring 4 × 10 candidates with the exact
vectors (read from a memory-mapped file, as vtsearch reads them from the catalog).

    python scripts/bench_distributed.py [--images 512] [--vectors 1000000] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 512
CHUNK = 10_000
SHARD_SIZE = 100_000
QUERIES_FROM, SAMPLE_FROM = 10**12, 2 * 10**12  # where queries and the training sample are drawn


# part 2: runs in its own process (see main), so its memory is its own


def synthetic_chunks(count: int, first: int = 0, centres: int = 2000):
    """Clustered unit vectors ``first`` … ``first + count - 1`` of one endless stream
    (around the same centres), chunk by chunk: vector i is always the same."""
    means = np.random.default_rng(0).standard_normal((centres, DIM)).astype(np.float32)
    for start in range(first, first + count, CHUNK):
        size = min(CHUNK, first + count - start)
        chunk_rng = np.random.default_rng(start)
        rows = means[chunk_rng.integers(0, centres, size)] + chunk_rng.standard_normal((size, DIM)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        yield np.arange(start, start + size, dtype=np.int64), rows


def release_freed_memory() -> None:
    """Hand memory that was freed back to the kernel, so one step's peak is its own."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakAnon:
    """Samples RssAnon every 20 ms (the kernel keeps a peak only for all of RSS)."""

    def __init__(self):
        self.peak = memory_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, memory_kb("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, memory_kb("RssAnon"))


def merge_part(vectors: int, folder: Path) -> dict:
    """The steps of :func:`vtsearch.store.ondisk.build`, one at a time, each with its time and
    the peak of the process's anonymous memory while it ran."""
    import faiss

    from vtsearch.config import AnnConfig
    from vtsearch.store import ondisk
    from vtsearch.store.ann import AnnIndex
    from vtsearch.store.annbuild import exact_top, recall_at_k

    config = AnnConfig(factory="IVF1024,SQ4", auto=False)
    baseline_anon = memory_kb("RssAnon")
    phases = {}

    def phase(name, work):
        release_freed_memory()
        at_start = memory_kb("RssAnon")
        anon, started = PeakAnon(), time.perf_counter()
        result = work()
        phases[name] = {"seconds": round(time.perf_counter() - started, 2),
                        "peak_anon_mb": round((anon.stop() - at_start) / 1024, 1)}
        return result

    def train():
        index = faiss.index_factory(DIM, config.factory, faiss.METRIC_INNER_PRODUCT)
        index.train(np.concatenate([rows for _, rows in synthetic_chunks(40 * 1024, SAMPLE_FROM)]))
        return index

    trained = phase("train", train)
    work = folder / "shards"
    work.mkdir()
    # the exact vectors, for re-scoring, kept on disk as the catalog keeps them (not timed)
    exact = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(vectors, DIM))
    for ids, rows in synthetic_chunks(vectors):
        exact[ids] = rows
    exact.flush()
    del exact
    release_freed_memory()
    shards = phase("add_shards", lambda: ondisk.add_shards(trained, synthetic_chunks(vectors), work,
                                                          shard_size=SHARD_SIZE, jobs=2))
    index, name = phase("merge", lambda: ondisk.merge(trained, shards, folder))
    shard_mb = sum(path.stat().st_size for path in shards) / 2**20
    config = dataclasses.replace(config, on_disk=True, data_file=name)
    AnnIndex(index, config, writable=False).save(folder / "ann.faiss")
    size = (folder / "ann.faiss").stat().st_size + (folder / name).stat().st_size
    del index
    for path in shards:
        path.unlink()

    queries = np.concatenate([rows for _, rows in synthetic_chunks(100, QUERIES_FROM)])
    truth = exact_top(queries, synthetic_chunks(vectors), 10)

    def search():
        loaded = AnnIndex.load(folder / "ann.faiss", config)  # as a reader opens it: mapped
        exact = np.load(folder / "vectors.npy", mmap_mode="r")
        rows = []
        for k_factor in (1, 4):
            loaded.config = dataclasses.replace(config, k_factor=k_factor)
            loaded.refine = (lambda ids: exact[np.asarray(ids)]) if k_factor > 1 else None
            for nprobe in (8, 16, 32, 64):
                loaded.search(queries[:5], 10, nprobe=nprobe)  # warm
                started = time.perf_counter()
                found = [loaded.search(query, 10, nprobe=nprobe)[0] for query in queries]
                latency_ms = (time.perf_counter() - started) / len(queries) * 1000
                rows.append({"nprobe": nprobe, "k_factor": k_factor, "latency_ms": round(latency_ms, 2),
                             "recall_at_10": round(recall_at_k(found, truth), 3)})
        return rows

    searches = phase("search", search)
    return {
        "vectors": vectors, "dim": DIM, "factory": config.factory, "shards": len(shards),
        "shards_mb": round(shard_mb, 1), "index_mb": round(size / 2**20, 1),
        "raw_vectors_mb": round(vectors * DIM * 4 / 2**20, 1),
        "baseline_anon_mb": round(baseline_anon / 1024, 1), "peak_rss_mb": round(memory_kb("VmHWM") / 1024, 1),
        "phases": phases, "search": searches,
    }


# part 1


def make_images(folder: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for number in range(count):
        pixels = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((480, 360), Image.BILINEAR).save(folder / f"{number:05d}.jpg", quality=90)


def embed_part(images: int, root: Path) -> dict:
    import ray

    from vtsearch import EncoderSpec, Index, IngestOptions
    from vtsearch.build.distributed import RayOptions

    sys.path.insert(0, str(Path(__file__).parent))
    from benchkit import write_random_model

    write_random_model(root / "model", "ViT-B-32")
    make_images(root / "images", images)
    spec = EncoderSpec.parse(f"local-dir:{root / 'model'}")
    options = IngestOptions(batch_size=32)
    results = {}

    def run(name, ray_options=None):
        with Index.create(root / name, spec, device="cpu") as index:
            index.encoder  # the local model's load is not timed, like the index's creation
            started = time.perf_counter()
            summary = index.add([root / "images"], options, ray=ray_options)
            seconds = time.perf_counter() - started
        assert summary.indexed == images, summary
        results[name] = {"seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1)}

    run("local")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = round(time.perf_counter() - started, 1)
    try:
        run("ray_1", RayOptions(workers=1, num_cpus_per_worker=2))
        run("ray_2", RayOptions(workers=2, num_cpus_per_worker=1))
    finally:
        ray.shutdown()
    for name in ("ray_1", "ray_2"):
        results[name]["ratio_vs_local"] = round(results[name]["images_per_s"] / results["local"]["images_per_s"], 2)
    return {"images": images, "cores": os.cpu_count(), **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--part", choices=["all", "embed", "merge"], default="all")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--merge-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge_child:
        print(json.dumps(merge_part(args.vectors, Path(args.merge_child))))
        return
    report = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as temp:
        if args.part in ("all", "embed"):
            report["embed"] = embed_part(args.images, Path(temp) / "embed")
        if args.part in ("all", "merge"):
            folder = Path(temp) / "merge"
            folder.mkdir()
            child = subprocess.run([sys.executable, __file__, "--vectors", str(args.vectors), "--merge-child",
                                    str(folder)], check=True, capture_output=True, text=True)
            report["merge"] = json.loads(child.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if "embed" in report:
        embed = report["embed"]
        print(f"embedding {embed['images']} images on {embed['cores']} cores (ViT-B-32):")
        for name in ("local", "ray_1", "ray_2"):
            row = embed[name]
            ratio = f"  ({row['ratio_vs_local']:.2f} x local)" if "ratio_vs_local" in row else ""
            print(f"  {name:6s} {row['images_per_s']:7.1f} images/s in {row['seconds']:6.1f} s{ratio}")
        print(f"  ray.init: {embed['ray_init_s']} s (not in the rates)")
    if "merge" in report:
        merge = report["merge"]
        print(f"on-disk IVF: {merge['vectors']:,} x {merge['dim']} -> {merge['factory']}, {merge['shards']} shards "
              f"({merge['shards_mb']} MB)")
        print(f"  index on disk {merge['index_mb']} MB (the raw float32 vectors: {merge['raw_vectors_mb']} MB)")
        for name, row in merge["phases"].items():
            print(f"  {name:10s} {row['seconds']:7.2f} s, peak anonymous memory {row['peak_anon_mb']:7.1f} MB "
                  "above the step's start")
        print(f"  whole process: peak RSS {merge['peak_rss_mb']} MB, mapped file pages included "
              f"(anonymous at the start: {merge['baseline_anon_mb']} MB)")
        for row in merge["search"]:
            rescored = f"re-scored exactly ({row['k_factor']} x 10 candidates)" if row["k_factor"] > 1 else "codes alone"
            print(f"  nprobe {row['nprobe']:3d}, {rescored:38s} {row['latency_ms']:6.2f} ms/query, "
                  f"recall@10 {row['recall_at_10']}")


if __name__ == "__main__":
    main()
