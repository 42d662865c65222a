#!/usr/bin/env python3
"""Load on ``vtsearch serve``: bounded concurrent clients against a loopback server for a
fixed time, with and without rerank, next to the same queries run in-process.

    python scripts/bench_server.py [--clients 16] [--seconds 20] [--images 1000] [--json]

Set-up (not timed): open_clip's ViT-B-32 with random weights in ``local-dir`` layout
(nothing is downloaded), an index of ``--images`` random pictures, and a fusion scorer
whose weight is 0.5, so text queries really go through it (random weights: this measures
cost, not quality). The server is a real ``vtsearch serve`` process on 127.0.0.1.

For each mode (``rerank``: the top 100 candidates through the scorer; ``stage1``: FAISS
order only) it measures, one after the other:

- ``in_process``: ``Index.query`` called back to back in this process, queries/s: what
  the machine can do without HTTP;
- ``server``: ``--clients`` threads, each with its own keep-alive connection, posting
  ``/api/search`` in a loop for ``--seconds``: requests/s, p50/p99 latency, and errors
  (any answer but 200, or a failed connection);

and prints server ÷ in-process throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

from benchkit import free_port, start_server, write_random_model, write_random_photos

MODEL = "ViT-B-32"
QUERIES = ["a dog on a beach", "a red car in the snow", "two people under an umbrella", "a bowl of fruit",
           "a harbour at night", "a cat asleep on a sofa", "a mountain lake", "a bicycle against a wall"]


def build_index(root: Path, images: int) -> Path:
    from vtsearch import EncoderSpec, Index, IngestOptions
    from vtsearch.fusion import FusionConfig
    from vtsearch.query.rerank import Reranker

    write_random_model(root / "model", MODEL)
    photos = root / "photos"
    write_random_photos(photos, images)
    with Index.create(root / "index", EncoderSpec.parse(f"local-dir:{root / 'model'}"), device="cpu") as index:
        index.add([photos], IngestOptions(workers=0))
        layout = index.regions
        reranker = Reranker.untrained(FusionConfig(index.encoder.text_token_dim, layout.dim, layout.grid, layout.prefix,
                                                   max_tokens=index.encoder.context_length))
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(0.5)
        reranker.trained = {"note": "random weights with w = 0.5, for benchmarking"}
        index.save_reranker(reranker)
    return root / "index"


def in_process(index_dir: Path, rerank: bool, seconds: float) -> tuple[float, dict[str, float]]:
    """Queries per second, ``Index.query`` back to back, and the median ms per stage."""
    from vtsearch import Index

    with Index.open(index_dir, device="cpu") as index:
        index.query(QUERIES[0], k=20, rerank=rerank)  # warm-up
        stages: dict[str, list[float]] = {}
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            response = index.query(QUERIES[count % len(QUERIES)], k=20, recall_k=100, rerank=rerank)
            for stage, ms in response.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
            count += 1
        rate = count / (time.perf_counter() - started)
    return rate, {stage: round(statistics.median(values), 1) for stage, values in stages.items()}


def load(base: str, clients: int, seconds: float, rerank: bool) -> dict[str, float]:
    """``clients`` threads posting searches for ``seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        session = requests.Session()
        sent = 0
        while time.perf_counter() < stop:
            body = {"text": QUERIES[(number + sent) % len(QUERIES)], "k": 20, "recall_k": 100, "rerank": rerank}
            started = time.perf_counter()
            try:
                response = session.post(f"{base}/api/search", json=body, timeout=120)
                failure = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:120]}"
            except requests.RequestException as error:
                failure = f"{type(error).__name__}: {error}"
            elapsed = time.perf_counter() - started
            with lock:
                (errors.append(failure) if failure else latencies.append(elapsed))
            sent += 1

    requests.post(f"{base}/api/search", json={"text": QUERIES[0], "rerank": rerank}, timeout=120)  # warm-up
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    stop = started + seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "ok": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per mode, for the server load")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    result: dict[str, object] = {"model": MODEL, "images": args.images, "clients": args.clients,
                                 "seconds": args.seconds, "cpus": os.cpu_count(), "modes": {}}
    with tempfile.TemporaryDirectory(prefix="vtsearch-bench-server-") as temp:
        index_dir = build_index(Path(temp), args.images)
        port = free_port()
        server = start_server(index_dir, port)
        try:
            for mode, rerank in (("rerank", True), ("stage1", False)):
                direct, stages = in_process(index_dir, rerank, args.seconds / 2)
                served = load(f"http://127.0.0.1:{port}", args.clients, args.seconds, rerank)
                result["modes"][mode] = {"in_process_per_s": round(direct, 2), "in_process_stage_ms": stages,
                                         **served,
                                         "server_over_in_process": round(served["requests_per_s"] / direct, 3)}
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{MODEL}, {args.images} images, {args.clients} clients x {args.seconds:g} s per mode, "
          f"{result['cpus']} CPUs")
    for mode, row in result["modes"].items():
        print(f"{mode:>7}: server {row['requests_per_s']:.1f} req/s (p50 {row['p50_ms']:.0f} ms, "
              f"p99 {row['p99_ms']:.0f} ms, {row['errors']} errors of {row['ok'] + row['errors']}); "
              f"in-process {row['in_process_per_s']:.1f} q/s {row['in_process_stage_ms']}; "
              f"ratio {row['server_over_in_process']:.2f}")
        if row["first_error"]:
            print(f"         first error: {row['first_error']}")


if __name__ == "__main__":
    main()
