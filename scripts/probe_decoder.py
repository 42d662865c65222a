#!/usr/bin/env python3
"""Which words a CoCa index's decoder cannot predict: −log p of each caption word under its
own image, averaged per word.

The decoder's score is the summed log-probability of a caption's tokens; this splits it
by token, so that a word the decoder only guesses (a relation word at ln 4 = 1.39 nats
among four, a shape at ln 2 between two) stands out from those it reads off the image
(near 0). It runs the index's own stage 2 (``vtsearch.query.decoder``) on the stored
tokens, as a search does. Words are open_clip's BPE tokens as decoded.

    python scripts/probe_decoder.py DATA/test_twins.jsonl --index INDEX [--limit 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from vtsearch import Index
from vtsearch.query.decoder import DecoderReranker
from vtsearch.train import load_pairs, resolve_pairs

BATCH = 64  # captions scored at once


def word_losses(reranker: DecoderReranker, regions: torch.Tensor, ids: list[torch.Tensor],
                decode) -> dict[str, list[float]]:
    """−log p of every caption token after the first, under its image, grouped by token."""
    decoder = reranker.decoder
    losses: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(ids), BATCH):
        rows = ids[start:start + BATCH]
        padded = torch.nn.utils.rnn.pad_sequence([row.long() for row in rows], batch_first=True)  # (b, T)
        lengths = torch.tensor([len(row) for row in rows])
        with torch.inference_mode():
            image = decoder.image_tokens(regions[start:start + BATCH])  # (b, N, D)
            picked = decoder.token_log_probs(image, decoder.text_states(padded), padded, lengths)  # (b, T-1)
        for row, scores in zip(rows, picked.cpu()):
            for token, score in zip(row[1:].tolist(), scores[:len(row) - 1].tolist()):
                losses[decode(token)].append(-score)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("--index", required=True)
    parser.add_argument("--limit", type=int, default=1000, help="captions scored")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with Index.open(args.index, device="cpu") as index:
        reranker = index.reranker
        if not isinstance(reranker, DecoderReranker):
            parser.error(f"{args.index} is not reranked by a CoCa decoder")
        resolved = resolve_pairs(index, load_pairs(args.pairs))
        captions, image_ids = resolved.captions[:args.limit], resolved.image_ids[:args.limit]
        features = index.encoder.encode_text_features(captions)
        regions = index.region_source.regions(image_ids)  # (n, 1 + h*w, width)
        decode = index.encoder.tokenizer.decode
        losses = word_losses(reranker, regions, list(features.ids), lambda token: decode([token]).strip())
    rows = sorted(({"word": word, "count": len(values), "nats": round(sum(values) / len(values), 3),
                    "share": round(sum(values), 1)} for word, values in losses.items()), key=lambda row: -row["share"])
    total = sum(row["share"] for row in rows)
    if args.json:
        print(json.dumps({"captions": len(captions), "nats_per_caption": round(total / len(captions), 3),
                          "words": rows}))
        return
    print(f"{len(captions)} captions, {total / len(captions):.3f} nats a caption under their own images")
    print(f"{'word':>16} {'count':>6} {'nats':>6} {'of all':>7}")
    for row in rows:
        print(f"{row['word']:>16} {row['count']:>6} {row['nats']:>6.3f} {row['share'] / total:>7.1%}")


if __name__ == "__main__":
    main()
