#!/usr/bin/env python3
"""Stage-1 search at scale: vtsearch's default index next to numpy brute force, one run.

For each N, synthetic d-dimensional unit vectors with realistic structure (a mixture of
2,000 clusters in a 96-dimensional latent space, projected and noised, so that a query's
nearest neighbour sits at cosine ≈ 0.83 and its tenth at ≈ 0.79, as with CLIP image
neighbours) are written to a real vtsearch catalog (SQLite). Then the index that
vtsearch chooses for N is built through the product's own path
(:func:`vtsearch.store.annbuild.build_from_catalog`: sample, train, fill, calibrate). Its exact re-scoring
reads vectors from that catalog, as searches do.

Measured per N, with 200 queries from the same generator (after 20 others, as in a
process that has searched before):
- ``recall_at_10`` against exact search;
- single-query latency p50/p99 (ANN search including exact re-scoring; no text encoding);
- batch throughput (all queries in one call);
- ``bytes_per_vector``: the FAISS index's size over N, what it takes in RAM once paged in
  (re-scoring vectors stay in the catalog on disk);
- build time;
- the baseline: numpy brute force over all vectors held in RAM as float32 (what rclip
  does), its p50, and ``speedup_vs_bruteforce`` = brute-force p50 / index p50.

    python scripts/bench_search.py [--sizes 100000 1000000] [--dim 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vtsearch.store import annbuild
from vtsearch.store.catalog import INDEXED, Catalog, images_table

LATENT, CLUSTERS = 96, 2000
QUERIES = 200
WARM_UP = 20
INSERT_CHUNK = 10_000


def synthetic(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors from the fixed mixture; ``seed`` picks which points."""
    projection = np.random.default_rng(123).standard_normal((LATENT, dim)).astype(np.float32)
    centres = np.random.default_rng(7).standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, CLUSTERS, count)] + 0.5 * rng.standard_normal((count, LATENT)).astype(np.float32)
    vectors = latent @ projection + 2.0 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill_catalog(path: Path, vectors: np.ndarray) -> Catalog:
    """A catalog with one indexed row per vector (ids 1..N), inserted in bulk."""
    catalog = Catalog.open(path, create=True)
    with catalog.engine.begin() as connection:
        for start in range(0, len(vectors), INSERT_CHUNK):
            rows = [{"path": f"/synthetic/{start + i:09d}.jpg", "size": 1, "mtime_ns": 0, "status": INDEXED,
                     "embedding": vector.tobytes(), "format": "JPEG", "width": 1, "height": 1,
                     "updated_at": 0.0}
                    for i, vector in enumerate(vectors[start:start + INSERT_CHUNK])]
            connection.execute(images_table.insert(), rows)
    with catalog.engine.connect() as connection:  # as a catalog written batch by batch would be
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return catalog


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_size(count: int, dim: int, workdir: Path) -> dict:
    vectors = synthetic(count, dim, seed=1)
    queries = synthetic(QUERIES, dim, seed=2)
    started = time.perf_counter()
    catalog = fill_catalog(workdir / f"catalog-{count}.sqlite", vectors)
    insert_s = time.perf_counter() - started

    config = annbuild.choose_config(count, dim)
    started = time.perf_counter()
    ann = annbuild.build_from_catalog(catalog, dim, config)
    build_s = time.perf_counter() - started

    truth = annbuild.exact_top(queries, [(np.arange(1, count + 1), vectors)], 10)
    for query in synthetic(WARM_UP, dim, seed=3):  # other queries: a process that has searched before
        ann.search(query[None], 10)
    single = []
    found = []
    for query in queries:
        begun = time.perf_counter()
        found.append(ann.search(query[None], 10)[0])
        single.append((time.perf_counter() - begun) * 1000.0)
    begun = time.perf_counter()
    ann.search(queries, 10)
    batch_qps = len(queries) / (time.perf_counter() - begun)

    brute = []
    for query in queries[:50]:
        begun = time.perf_counter()
        scores = vectors @ query
        top = np.argpartition(-scores, 10)[:10]
        top[np.argsort(-scores[top])]
        brute.append((time.perf_counter() - begun) * 1000.0)
    index_bytes = len(faiss.serialize_index(ann.cpu_index))
    p50 = statistics.median(single)
    result = {
        "n": count, "dim": dim, "index": ann.config.factory,
        "nprobe": ann.config.nprobe, "k_factor": ann.config.k_factor,
        "recall_at_10": round(annbuild.recall_at_k(found, truth), 4),
        "calibrated_recall": ann.config.calibrated_recall,
        "p50_ms": round(p50, 3), "p99_ms": round(percentile(single, 99), 3),
        "batch_qps": round(batch_qps, 1),
        "bytes_per_vector": round(index_bytes / count, 1),
        "build_s": round(build_s, 1), "catalog_insert_s": round(insert_s, 1),
        "bruteforce_p50_ms": round(statistics.median(brute), 3),
        "speedup_vs_bruteforce": round(statistics.median(brute) / p50, 1),
    }
    catalog.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None, help="where the catalogs go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vtsearch-bench-", dir=args.workdir))
    try:
        rows = [bench_size(count, args.dim, workdir) for count in args.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    header = (f"{'n':>9} {'index':>16} {'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>9} "
              f"{'B/vector':>8} {'build s':>7} {'brute p50':>9} {'speed-up':>8}")
    print(header)
    for row in rows:
        print(f"{row['n']:>9} {row['index']:>16} {row['recall_at_10']:>9.3f} {row['p50_ms']:>7.2f} "
              f"{row['p99_ms']:>7.2f} {row['batch_qps']:>9.0f} {row['bytes_per_vector']:>8.0f} "
              f"{row['build_s']:>7.1f} {row['bruteforce_p50_ms']:>9.2f} {row['speedup_vs_bruteforce']:>8.1f}")


if __name__ == "__main__":
    main()
