#!/usr/bin/env python3
"""What an index's reranker adds to a warm search, side by side, as a client sees it.

Opens an index once (any: a trained fusion scorer's, a CoCa's decoder), then runs the same
queries back to back as ``Index.query(text, k, recall_k=K, rerank=False)`` (stage 1: the
text tower and FAISS) and ``rerank=True`` (then reading the shortlist's regions and
stage 2), interleaved query by query so both see the same machine. Prints, for each
shortlist size, the median milliseconds of each and their ratio. Queries are the
``caption`` fields of a JSON Lines file (the first ``--count``), or a few built in.

With ``--http`` the same searches go to a real ``vtsearch serve`` of the index instead
(started here on a free loopback port, on the CPU), as ``POST /api/search`` over one
keep-alive connection: the time a client of the server waits, request and answer
included.

    python scripts/bench_query.py --index DIR [--queries captions.jsonl] [--count 35]
                                  [--recall-k 10 20 50] [--threads N] [--http] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchkit import free_port, start_server
from vtsearch import Index

Search = Callable[[str, int, int, bool], object]  # (text, k, recall_k, rerank)

QUERIES = ["a red circle left of a blue square", "a green triangle above a white cross",
           "a yellow star below a purple circle", "a blue square right of a red triangle"]


def load_queries(path: Path | None, count: int) -> list[str]:
    if path is None:
        return (QUERIES * count)[:count]
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["caption"] for line in lines[:count]]


def timed_ms(search: Search, text: str, k: int, recall_k: int, rerank: bool) -> float:
    started = time.perf_counter()
    search(text, k, recall_k, rerank)
    return (time.perf_counter() - started) * 1000.0


def measure(search: Search, queries: list[str], k: int, recall_k: int) -> dict[str, float]:
    for text in queries[:3]:  # warm up both paths
        timed_ms(search, text, k, recall_k, False)
        timed_ms(search, text, k, recall_k, True)
    stage1, reranked = [], []
    for text in queries:
        stage1.append(timed_ms(search, text, k, recall_k, False))
        reranked.append(timed_ms(search, text, k, recall_k, True))
    first, both = statistics.median(stage1), statistics.median(reranked)
    return {"recall_k": recall_k, "stage1_ms": round(first, 2), "reranked_ms": round(both, 2),
            "ratio": round(both / first, 2)}


def in_process(index: Index) -> Search:
    return lambda text, k, recall_k, rerank: index.query(text, k=k, recall_k=recall_k, rerank=rerank)


def over_http(base: str) -> Search:
    import requests

    session = requests.Session()

    def search(text: str, k: int, recall_k: int, rerank: bool) -> None:
        body = {"text": text, "k": k, "recall_k": recall_k, "rerank": rerank}
        response = session.post(f"{base}/api/search", json=body, timeout=120)
        if response.status_code != 200:
            raise SystemExit(f"the server answered {response.status_code}: {response.text[:200]}")

    return search


@contextlib.contextmanager
def searching(index: Index, directory: Path, http: bool) -> Iterator[Search]:
    """``index``'s own search, or with ``http`` a ``vtsearch serve`` of ``directory``'s, for as long as open."""
    if not http:
        yield in_process(index)
        return
    port = free_port()
    server = start_server(directory, port)
    try:
        yield over_http(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure_all(index: Index, directory: Path, http: bool, queries: list[str], k: int,
                sizes: list[int]) -> list[dict[str, float]]:
    with searching(index, directory, http) as search:
        return [measure(search, queries, k, recall_k) for recall_k in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, help="JSON Lines with a caption field")
    parser.add_argument("--count", type=int, default=35, help="queries per shortlist size")
    parser.add_argument("-k", type=int, default=10, help="results per query")
    parser.add_argument("--recall-k", type=int, nargs="+", default=[10, 20, 50], help="shortlist sizes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--http", action="store_true", help="search through a vtsearch serve of the index")
    parser.add_argument("--json", action="store_true", help="one JSON line per shortlist size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    queries = load_queries(args.queries, args.count)
    index = Index.open(args.index, device="cpu")
    try:
        summary = index.info().reranker
        scorer = summary.scorer if summary is not None else "none (stage 1 only)"
        rows = measure_all(index, args.index, args.http, queries, args.k, args.recall_k)
    finally:
        index.close()
    via = {"via": "http"} if args.http else {"via": "python", "threads": torch.get_num_threads()}
    if args.json:
        for row in rows:
            print(json.dumps({"index": str(args.index), "scorer": scorer, "queries": len(queries), **via, **row}))
        return
    through = "vtsearch serve" if args.http else f"Index.query, {torch.get_num_threads()} threads"
    print(f"{args.index}: reranker {scorer}, {len(queries)} queries through {through}, medians in ms")
    for row in rows:
        print(f"  shortlist {row['recall_k']:>3}: stage 1 {row['stage1_ms']:.1f}, with stage 2 "
              f"{row['reranked_ms']:.1f} (x{row['ratio']:.2f})")


if __name__ == "__main__":
    main()
