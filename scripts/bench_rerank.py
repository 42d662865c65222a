#!/usr/bin/env python3
"""What reranking costs next to stage 1, measured side by side in one run.

Stage 1 = encoding one text query (the real open_clip tokenizer and text tower) + a FAISS
search of the shortlist. Stage 2 = reading the shortlist's regions from a memory-mapped
region store (fp16 → fp32) + the fusion scorer over them; the catalog lookup of region
rows (~1.5 ms for 100 ids) is not included. The model is ViT-B-32 with random weights
(no download needed; the cost is that of the pretrained model), with the regions a new
index of it keeps (7 × 7 × 768, its last block's tokens) and the default scorer (width
128, 2 layers, ``--region-layers`` blocks among the regions): the caption scorer that
``train-reranker`` trains, with the largest vocabulary it keeps (``MAX_VOCAB`` token
classes, as a captioned photo collection gives: ``bench_vocabulary``) and the adaptive
head it then builds (``--head full``: one softmax over them, as scorers trained before
had), or with ``--score match`` the match head.
The gallery is synthetic. Stage 2 is measured both ways a query can run it: from the
regions, and from the images as the trained scorer reads them, which an index keeps
beside the scorer (``vtsearch.query.readcache``: the query then runs only the text blocks
and the caption head).

``--scorer coca`` measures CoCa's text decoder instead (``vtsearch.query.decoder``), on
coca_ViT-B-32 with random weights, at k = 10/30/100, in the two ways a CoCa index could
keep its images: ``--coca-store tokens`` (what vtsearch keeps: the 1 + 7 x 7 x 768 tokens
before the attentional pooler, which then runs per query) or ``pooled`` (the pooler's
255 x 512 outputs, read as they are).

    python scripts/bench_rerank.py [--gallery 20000] [--repeats 30] [--device cpu] [--score caption]
                                   [--precision fp32|bf16|auto] [--json]
    python scripts/bench_rerank.py --scorer coca [--coca-store tokens|pooled] [--precision fp32|bf16]
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
from vtsearch.config import AnnConfig, EncoderSpec
from vtsearch.fusion import FusionConfig, ReadImages, head_cutoffs
from vtsearch.encoder import Encoder
from vtsearch.query.decoder import DecoderReranker
from vtsearch.query.rerank import Reranker
from vtsearch.store.ann import AnnIndex
from vtsearch.train.loop import MAX_VOCAB, TrainOptions
from vtsearch.store.regions import RegionLayout, RegionStore

QUERIES = ["a red car parked left of a blue house", "two dogs playing in the snow",
           "a plate of pasta with basil on a wooden table", "a man riding a bicycle"]


def bench_vocabulary(encoder: Encoder) -> tuple[int, ...]:
    """``MAX_VOCAB`` token ids as a caption head's vocabulary, commonest first: the
    queries' own tokens among the tokenizer's lowest ids, in id order (a BPE tokenizer
    numbers its merges from the commonest, so the order stands in for frequency): the
    queries' words then fall in every band of an adaptive head, as a real one's do."""
    wanted = {int(i) for query in QUERIES for i in encoder.tokenizer([query])[0] if int(i)}
    filler = [i for i in range(1, 50_000) if i not in wanted][:MAX_VOCAB - len(wanted)]
    return tuple(sorted(wanted.union(filler)))


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
    parser.add_argument("--score", choices=("caption", "match"), default="caption", help="the scorer's head")
    parser.add_argument("--head", choices=("adaptive", "full"), default="adaptive",
                        help="the caption head over its vocabulary: adaptive (what train-reranker builds for a "
                             "large one) or one full softmax (scorers trained before)")
    parser.add_argument("--region-layers", type=int, default=TrainOptions.region_layers,
                        help="the scorer's self-attention blocks over regions (train-reranker's default)")
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    parser.add_argument("--scorer", choices=("fusion", "coca"), default="fusion",
                        help="coca: CoCa's text decoder (coca_ViT-B-32 unless --model names another CoCa)")
    parser.add_argument("--coca-store", choices=("tokens", "pooled"), default="tokens",
                        help="--scorer coca: keep the tokens before the pooler, or its outputs")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="how the encoder and the scorer compute (auto: bf16 where the CPU has it, as an "
                             "index does)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.scorer == "coca":
        report(bench_coca(args, device), args)
        return
    encoder = random_encoder(args.model, device, args.precision)
    layout = encoder.region_layout()  # what a new index of this model keeps
    dim, grid = layout.dim, layout.grid

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.gallery, encoder.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = AnnIndex.empty(encoder.embed_dim, AnnConfig())
    ann.add(np.arange(args.gallery), vectors)

    with tempfile.TemporaryDirectory() as folder:
        store = RegionStore(Path(folder) / "regions.f16", layout)
        for start in range(0, args.store_rows, 500):
            store.append(rng.normal(size=(min(500, args.store_rows - start), layout.regions, dim)).astype(np.float16))
        vocab = bench_vocabulary(encoder) if args.score == "caption" else ()
        cutoffs = head_cutoffs(len(vocab) + 1) if vocab and args.head == "adaptive" else ()
        reranker = Reranker.untrained(FusionConfig(text_dim=encoder.text_token_dim, region_dim=dim, grid=grid,
                                                   max_tokens=encoder.context_length, score=args.score, vocab=vocab,
                                                   head_cutoffs=cutoffs,
                                                   word_dim=encoder.word_dim, causal_states=encoder.text_causal,
                                                   region_layers=args.region_layers),
                                      device=device, precision=encoder.precision)
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(1.0)  # a trained scorer's cost: nothing skipped
        # what an index keeps beside a trained scorer: each image as its text blocks read it
        kept = RegionStore(Path(folder) / "read.f32", RegionLayout(grid=grid, dim=reranker.read_width,
                                                                    prefix=layout.prefix, dtype="float32"))
        for start in range(0, args.store_rows, 500):
            rows_read = list(range(start, min(start + 500, args.store_rows)))
            kept.append(reranker.read_images(torch.from_numpy(store.read(rows_read).astype(np.float32))).values)

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
            rerank_ms = median_ms(lambda: reranker.rerank(features.tokens[0], features.ids[0], stage1, regions),
                                  args.repeats)
            def read_kept():  # what ReadCache.images does after its catalog lookup
                return ReadImages(torch.from_numpy(kept.read(region_rows)))

            kept_ms = median_ms(read_kept, args.repeats)
            images = read_kept()
            from_kept_ms = median_ms(lambda: reranker.rerank(features.tokens[0], features.ids[0], stage1, images),
                                     args.repeats)
            stage1_ms, stage2_ms = encode_ms + ann_ms, regions_ms + rerank_ms
            rows.append({"model": args.model, "device": args.device, "score": args.score, "head": args.head,
                         "precision": encoder.precision, "region_layers": args.region_layers, "k": k,
                         "gallery": args.gallery, "regions": f"{grid}x{grid}x{dim}", "encode_ms": round(encode_ms, 2),
                         "ann_ms": round(ann_ms, 2), "stage1_ms": round(stage1_ms, 2),
                         "regions_ms": round(regions_ms, 2), "rerank_ms": round(rerank_ms, 2),
                         "stage2_ms": round(stage2_ms, 2), "ratio": round(stage2_ms / stage1_ms, 3),
                         "kept_ms": round(kept_ms, 2), "rerank_kept_ms": round(from_kept_ms, 2),
                         "stage2_kept_ms": round(kept_ms + from_kept_ms, 2),
                         "ratio_kept": round((kept_ms + from_kept_ms) / stage1_ms, 3)})
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{rows[0]['model']} on {args.device}, {torch.get_num_threads()} threads; regions {rows[0]['regions']}; "
          f"gallery {args.gallery}; {rows[0]['score']} scorer"
          + (f" ({rows[0]['head']} head)" if rows[0]["score"] == "caption" and "head" in rows[0] else "")
          + f"; {rows[0].get('precision', 'fp32')}; "
          f"{rows[0].get('region_layers', 0)} region blocks")
    kept = "kept_ms" in rows[0]
    print(f"{'k':>5} {'stage 1 ms':>11} {'(encode':>8} {'+ ann)':>7} {'stage 2 ms':>11} {'(regions':>9} "
          f"{'+ rerank)':>9} {'stage2/stage1':>14}" + (f" {'kept reads ms':>14} {'(read':>7} {'+ rerank)':>9} "
                                                      f"{'kept/stage1':>12}" if kept else ""))
    for row in rows:
        print(f"{row['k']:>5} {row['stage1_ms']:>11.2f} {row['encode_ms']:>8.2f} {row['ann_ms']:>7.2f} "
              f"{row['stage2_ms']:>11.2f} {row['regions_ms']:>9.2f} {row['rerank_ms']:>9.2f} {row['ratio']:>14.2f}"
              + (f" {row['stage2_kept_ms']:>14.2f} {row['kept_ms']:>7.2f} {row['rerank_kept_ms']:>9.2f} "
                 f"{row['ratio_kept']:>12.2f}" if kept else ""))


def coca_encoder(model: str, device: torch.device, precision: str) -> Encoder:
    """A CoCa with seeded random weights; its decoder's output projection, which open_clip
    leaves uninitialised without weights, drawn as training would start it."""
    import open_clip

    torch.manual_seed(0)
    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    decoder = network.text_decoder
    torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return Encoder(EncoderSpec(model, "random-init"), network, preprocess, open_clip.get_tokenizer(model), device,
                   precision)


def bench_coca(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Stage 1 and CoCa's decoder at k = 10/30/100, regions read from a region store."""
    model = args.model if args.model.startswith("coca") else "coca_ViT-B-32"
    encoder = coca_encoder(model, device, args.precision)
    reranker = DecoderReranker(encoder.model)
    grid, width = min(encoder.native_grid), encoder.image.region_dim
    if args.coca_store == "pooled":  # the pooler's outputs kept: read as they are
        probe = torch.zeros(1, 1 + grid * grid, width, dtype=encoder.input_dtype)
        count, dim = reranker.decoder.image_tokens(probe).shape[1:]
        layout = RegionLayout(grid=1, dim=dim, prefix=count - 1)
        reranker.decoder.image_tokens = lambda regions: regions.to(reranker.decoder.device, reranker.decoder.dtype)
    else:
        layout = RegionLayout(grid=grid, dim=width, prefix=1)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.gallery, encoder.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = AnnIndex.empty(encoder.embed_dim, AnnConfig())
    ann.add(np.arange(args.gallery), vectors)
    repeats = min(args.repeats, 3)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = RegionStore(Path(folder) / "regions.f16", layout)
        store.append(rng.normal(size=(100, layout.regions, layout.dim)).astype(np.float16))
        features = encoder.encode_text_features([QUERIES[0]])
        encode_ms = median_ms(lambda: encoder.encode_text_features([QUERIES[0]]), args.repeats)
        for k in (10, 30, 100):
            ann_ms = median_ms(lambda: ann.search(features.vectors, k), args.repeats)
            stage1 = np.array([score for _, score in ann.search(features.vectors, k)[0]], dtype=np.float32)
            regions_ms = median_ms(lambda: torch.from_numpy(store.read(list(range(k))).astype(np.float32)), repeats)
            regions = torch.from_numpy(store.read(list(range(k))).astype(np.float32))
            rerank_ms = median_ms(lambda: reranker.rerank(None, features.ids[0], stage1, regions,
                                                          hidden=features.hidden[0]), repeats)  # as a search does
            stage1_ms, stage2_ms = encode_ms + ann_ms, regions_ms + rerank_ms
            rows.append({"model": model, "device": args.device, "score": f"coca-decoder/{args.coca_store}",
                         "precision": encoder.precision, "k": k, "query_tokens": len(features.ids[0]),
                         "gallery": args.gallery, "bytes_per_image": layout.row_bytes,
                         "regions": f"{layout.regions}x{layout.dim}", "encode_ms": round(encode_ms, 2),
                         "ann_ms": round(ann_ms, 2), "stage1_ms": round(stage1_ms, 2),
                         "regions_ms": round(regions_ms, 2), "rerank_ms": round(rerank_ms, 2),
                         "stage2_ms": round(stage2_ms, 2), "ratio": round(stage2_ms / stage1_ms, 3)})
    return rows


if __name__ == "__main__":
    main()
