#!/usr/bin/env python3
"""What an index's reranker adds to a warm search through the Python API, side by side.

Opens an index once (any: a trained fusion scorer's, a CoCa's decoder), then runs the same
queries back to back as ``Index.query(text, k, recall_k=K, rerank=False)`` (stage 1: the
text tower and FAISS) and ``rerank=True`` (then reading the shortlist's regions and
stage 2), interleaved query by query so both see the same machine. Prints, for each
shortlist size, the median milliseconds of each and their ratio. Queries are the
``caption`` fields of a JSON Lines file (the first ``--count``), or a few built in.

    python scripts/bench_query.py --index DIR [--queries captions.jsonl] [--count 35]
                                  [--recall-k 10 20 50] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vtsearch import Index

QUERIES = ["a red circle left of a blue square", "a green triangle above a white cross",
           "a yellow star below a purple circle", "a blue square right of a red triangle"]


def load_queries(path: Path | None, count: int) -> list[str]:
    if path is None:
        return (QUERIES * count)[:count]
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["caption"] for line in lines[:count]]


def timed_ms(index: Index, text: str, k: int, recall_k: int, rerank: bool) -> float:
    started = time.perf_counter()
    index.query(text, k=k, recall_k=recall_k, rerank=rerank)
    return (time.perf_counter() - started) * 1000.0


def measure(index: Index, queries: list[str], k: int, recall_k: int) -> dict[str, float]:
    for text in queries[:3]:  # warm up both paths
        timed_ms(index, text, k, recall_k, False)
        timed_ms(index, text, k, recall_k, True)
    stage1, reranked = [], []
    for text in queries:
        stage1.append(timed_ms(index, text, k, recall_k, False))
        reranked.append(timed_ms(index, text, k, recall_k, True))
    first, both = statistics.median(stage1), statistics.median(reranked)
    return {"recall_k": recall_k, "stage1_ms": round(first, 2), "reranked_ms": round(both, 2),
            "ratio": round(both / first, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, help="JSON Lines with a caption field")
    parser.add_argument("--count", type=int, default=35, help="queries per shortlist size")
    parser.add_argument("-k", type=int, default=10, help="results per query")
    parser.add_argument("--recall-k", type=int, nargs="+", default=[10, 20, 50], help="shortlist sizes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", action="store_true", help="one JSON line per shortlist size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    queries = load_queries(args.queries, args.count)
    index = Index.open(args.index, device="cpu")
    try:
        summary = index.info().reranker
        scorer = summary.scorer if summary is not None else "none (stage 1 only)"
        rows = [measure(index, queries, args.k, recall_k) for recall_k in args.recall_k]
    finally:
        index.close()
    if args.json:
        for row in rows:
            print(json.dumps({"index": str(args.index), "scorer": scorer, "queries": len(queries),
                              "threads": torch.get_num_threads(), **row}))
        return
    print(f"{args.index}: reranker {scorer}, {len(queries)} queries, {torch.get_num_threads()} threads, "
          f"medians in ms")
    for row in rows:
        print(f"  shortlist {row['recall_k']:>3}: stage 1 {row['stage1_ms']:.1f}, with stage 2 "
              f"{row['reranked_ms']:.1f} (x{row['ratio']:.2f})")


if __name__ == "__main__":
    main()
