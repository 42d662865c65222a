#!/usr/bin/env python3
"""What an index's features know, word by word: linear probes on captioned images.

The reranker can only bind what the encoder saw. Before blaming the scorer, ask the
features: for each frequent content word of the captions, a logistic probe learns from
80 % of the images whether their caption holds the word, and is scored on the other 20 %,
next to the base rate (always answering the majority). Three inputs are probed:

- ``global``: the stage-1 image vector;
- ``regions``: the stored region features, flattened (what the fusion scorer reads);
- ``mean``: the region features averaged (does position matter for the word?).

A word no input predicts above its base rate is invisible to both stages: no reranker
can use it.

    python scripts/probe_regions.py PAIRS.jsonl --index DIR [--words 20] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from vtsearch import Index
from vtsearch.train import STOPWORDS, load_pairs, resolve_pairs


def probe(features: torch.Tensor, labels: torch.Tensor, split: int, steps: int = 300) -> torch.Tensor:
    """Held-out accuracy per label of a logistic probe trained on the first ``split`` rows."""
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    features = (features - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(features.shape[1], labels.shape[1])
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(linear(features[:split]), labels[:split])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((linear(features[split:]) > 0).float() == labels[split:]).float().mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("--index", required=True)
    parser.add_argument("--words", type=int, default=20, help="the most frequent content words probed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with Index.open(args.index, device="cpu") as index:
        resolved = resolve_pairs(index, load_pairs(args.pairs))
        if len(set(resolved.image_ids)) < 10:
            example = f" (not indexed: {resolved.missing[0]}, ...)" if resolved.missing else ""
            raise SystemExit(f"{len(set(resolved.image_ids))} of the images in {args.pairs} are in "
                             f"{args.index}; a probe needs at least 10{example}")
        order = np.random.default_rng(0).permutation(len(resolved.image_ids))
        ids = [resolved.image_ids[i] for i in order]
        captions = [set(resolved.captions[i].lower().split()) for i in order]
        counts = Counter(word for words in captions for word in words if word not in STOPWORDS)
        vocabulary = [word for word, count in counts.most_common(args.words) if count < len(captions)]
        labels = torch.tensor([[word in words for word in vocabulary] for words in captions], dtype=torch.float32)
        regions = index.region_source.regions(ids)  # (N, R, D)
        inputs = {"global": torch.from_numpy(index.vectors(ids)),
                  "regions": regions.flatten(1), "mean": regions.mean(1)}
    split = int(0.8 * len(ids))
    base = torch.maximum(labels[split:].mean(0), 1 - labels[split:].mean(0))
    accuracy = {name: probe(features, labels, split) for name, features in inputs.items()}
    rows = [{"word": word, "base_rate": round(float(base[n]), 3),
             **{name: round(float(values[n]), 3) for name, values in accuracy.items()}}
            for n, word in enumerate(vocabulary)]
    if args.json:
        print(json.dumps({"images": len(ids), "held_out": len(ids) - split, "words": rows}))
        return
    print(f"{len(ids)} captioned images, probes scored on {len(ids) - split}")
    print(f"{'word':>12}  {'base':>5}  " + "  ".join(f"{name:>7}" for name in inputs))
    for row in rows:
        print(f"{row['word']:>12}  {row['base_rate']:>5.2f}  " + "  ".join(f"{row[name]:>7.2f}" for name in inputs))


if __name__ == "__main__":
    main()
