#!/usr/bin/env python3
"""What reranking costs next to stage 1, measured side by side in one run.

Stage 1 = encoding one text query (the real open_clip tokenizer and text tower) + a FAISS
search of the shortlist. Stage 2 = reading the shortlist's regions from a memory-mapped
region store (fp16 → fp32) + the fusion scorer over them; the catalog lookup of region
rows (~1.5 ms for 100 ids) is not included. The model is ViT-B-32 with random weights
(no download needed; the cost is that of the pretrained model), with its native 7 × 7 ×
512 regions and the default scorer (width 128, 2 layers). The gallery is synthetic.

    python scripts/bench_rerank.py [--gallery 20000] [--repeats 30] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchkit import random_encoder
from vtsearch.config import AnnConfig
from vtsearch.fusion import FusionConfig
from vtsearch.query.rerank import Reranker
from vtsearch.store.ann import AnnIndex
from vtsearch.store.regions import RegionLayout, RegionStore

QUERIES = ["a red car parked left of a blue house", "two dogs playing in the snow",
           "a plate of pasta with basil on a wooden table", "a man riding a bicycle"]


def median_ms(function, repeats: int) -> float:
    function()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--gallery", type=int, default=20_000, help="vectors in the FAISS index")
    parser.add_argument("--store-rows", type=int, default=2_000, help="distinct region rows on disk")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = random_encoder(args.model, device)
    dim, grid = encoder.embed_dim, min(encoder.native_grid)
    layout = RegionLayout(grid=grid, dim=dim)

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.gallery, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = AnnIndex.empty(dim, AnnConfig())
    ann.add(np.arange(args.gallery), vectors)

    with tempfile.TemporaryDirectory() as folder:
        store = RegionStore(Path(folder) / "regions.f16", layout)
        for start in range(0, args.store_rows, 500):
            store.append(rng.normal(size=(min(500, args.store_rows - start), layout.regions, dim)).astype(np.float16))
        reranker = Reranker.untrained(FusionConfig(text_dim=encoder.text_token_dim, region_dim=dim, grid=grid,
                                                   max_tokens=encoder.context_length), device=device)
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(1.0)  # a trained scorer's cost: nothing skipped

        query = {"n": 0}

        def encode():
            query["n"] += 1
            return encoder.encode_text_features([QUERIES[query["n"] % len(QUERIES)]])

        features = encode()
        encode_ms = median_ms(encode, args.repeats)
        rows = []
        for k in (10, 50, 100, 200):
            ann_ms = median_ms(lambda: ann.search(features.vectors, k), args.repeats)
            hits = ann.search(features.vectors, k)[0]
            region_rows = [image_id % args.store_rows for image_id, _ in hits]
            def read_regions():  # what StoredRegions does after its catalog lookup
                return torch.from_numpy(store.read(region_rows).astype(np.float32))

            regions_ms = median_ms(read_regions, args.repeats)
            regions = read_regions()
            stage1 = np.array([score for _, score in hits], dtype=np.float32)
            rerank_ms = median_ms(lambda: reranker.rerank(features.tokens[0], stage1, regions), args.repeats)
            stage1_ms, stage2_ms = encode_ms + ann_ms, regions_ms + rerank_ms
            rows.append({"model": args.model, "device": args.device, "k": k, "gallery": args.gallery,
                         "regions": f"{grid}x{grid}x{dim}", "encode_ms": round(encode_ms, 2),
                         "ann_ms": round(ann_ms, 2), "stage1_ms": round(stage1_ms, 2),
                         "regions_ms": round(regions_ms, 2), "rerank_ms": round(rerank_ms, 2),
                         "stage2_ms": round(stage2_ms, 2), "ratio": round(stage2_ms / stage1_ms, 3)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{args.model} on {args.device}, {torch.get_num_threads()} threads; regions {rows[0]['regions']}; "
          f"gallery {args.gallery}")
    print(f"{'k':>5} {'stage 1 ms':>11} {'(encode':>8} {'+ ann)':>7} {'stage 2 ms':>11} {'(regions':>9} "
          f"{'+ rerank)':>9} {'stage2/stage1':>14}")
    for row in rows:
        print(f"{row['k']:>5} {row['stage1_ms']:>11.2f} {row['encode_ms']:>8.2f} {row['ann_ms']:>7.2f} "
              f"{row['stage2_ms']:>11.2f} {row['regions_ms']:>9.2f} {row['rerank_ms']:>9.2f} {row['ratio']:>14.2f}")


if __name__ == "__main__":
    main()
