#!/usr/bin/env python3
"""How close ``train-reranker`` runs to the scorer's own speed.

Two numbers from one run, on the same index and scorer configuration:

* **train-reranker**: captions trained per second of the whole run (``train_reranker``
  from call to return: encoding the captions, reading the regions, mining the validation
  shortlists, every epoch's steps and validation);
* **bare scorer**: captions per second of the scorer's forward, backward and optimiser
  step on a batch already in memory (random tensors of the same shapes: batch, caption
  length, regions), nothing else.

The ratio says how much of a run is the scorer's own work. Word swaps (``--swaps``) are
off in the run: a swap epoch does more of the scorer's own work per caption (each
variant is scored too), which is the objective's cost, not the run's overhead. Run it
on an index with captions, e.g. the demo's:

    python scripts/bench_train.py demo/data/train.jsonl --index demo/index [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vtsearch.fusion import FusionScorer, TextBatch
from vtsearch.index import Index
from vtsearch.train import TrainOptions, load_pairs, train_reranker


def bare_pairs_per_second(scorer: FusionScorer, batch_size: int, tokens: int, seconds: float) -> float:
    """Captions per second of caption-objective steps on in-memory tensors."""
    config = scorer.config
    texts = TextBatch(torch.randn(batch_size, tokens, config.text_dim),
                      torch.randint(0, 50, (batch_size, tokens)), torch.full((batch_size,), tokens))
    regions = torch.randn(batch_size, config.grid * config.grid, config.region_dim)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=1e-4)

    def step() -> None:
        loss = scorer.caption_loss(texts, regions) + scorer.caption_loss(texts, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm up
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, help="captioned images already in the index")
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bare-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = TrainOptions(epochs=args.epochs, patience=args.epochs, swaps=0)  # the bare step has no swaps
    pairs = load_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as scratch:  # the run saves nothing into the index
        copy = Path(scratch) / "index"
        shutil.copytree(args.index, copy)
        with Index.open(copy, device="cpu") as index:
            started = time.perf_counter()
            reranker, report = train_reranker(index, pairs, options)
            run_seconds = time.perf_counter() - started
            lengths = [len(index.encoder.encode_text_features([pair.caption]).ids[0]) for pair in pairs[:200]]
    run_rate = report.train_captions * report.epochs_run / run_seconds
    config = reranker.scorer.config
    bare = bare_pairs_per_second(FusionScorer(config), options.batch_size, round(sum(lengths) / len(lengths)),
                                 args.bare_seconds)
    row = {"captions": report.train_captions, "epochs": report.epochs_run, "run_seconds": round(run_seconds, 1),
           "train_reranker_pairs_per_s": round(run_rate, 1), "bare_scorer_pairs_per_s": round(bare, 1),
           "ratio": round(run_rate / bare, 3), "threads": torch.get_num_threads(),
           "scorer": f"width {config.width}, {config.layers} blocks, {config.grid}x{config.grid}x{config.region_dim} "
                     f"regions, text {config.text_dim}"}
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['scorer']}; {row['captions']} captions x {row['epochs']} epochs in {row['run_seconds']} s "
          f"({row['threads']} threads)")
    print(f"train-reranker {row['train_reranker_pairs_per_s']:>8} pairs/s")
    print(f"bare scorer    {row['bare_scorer_pairs_per_s']:>8} pairs/s   (forward + backward + step, in memory)")
    print(f"ratio          {row['ratio']:>8}")


if __name__ == "__main__":
    main()
