#!/usr/bin/env python3
"""Can the fusion scorer bind on these features? A clean-label test on the shapes set.

``vtsearch train-reranker`` mines its negatives from stage 1. With one phrasing per
training image those carry label noise: a training scene is drawn several times, and an
image of the very same scene phrased the other way round ("a red circle left of a blue
square" / "a blue square right of a red circle") counts as a wrong answer. This script
first measures that noise (none since ``make_shapes.py`` lists both phrasings). Then it asks the question without the noise. For each training
caption, the candidates are its image plus images of its *twin scenes*: colours swapped,
shapes swapped, places swapped; the same words in another binding. A scorer (the
product's ``FusionScorer``, match loss only) is trained on them for a few epochs. On
held-out captions it reports how often each ranks the right image first among its twins:

- stage 1 alone;
- the match logit alone;
- the best ``stage1 + w · match``.

Chance is about 1/4. A scorer that tells a scene from its colours- and shapes-swapped
twins but not from its mirror (places swapped) resolves half: 1/2, with a training loss
near ln 2.

Two switches replace a side's features with perfect symbols, to find which side stops
the binding. ``--oracle-regions`` uses one-hot colour and shape at each thing's cell; it
needs pairs written by ``make_shapes.py --layout cells``, which records the cells.
``--oracle-text`` uses one-hot word and position per token. ``--random-negatives N``
adds N random images to each training caption's twins: easy negatives that teach which
words go with which regions (grounding), which twins alone never show.

    python scripts/probe_binding.py DATA/train.jsonl --index DIR [--epochs 4]
           [--random-negatives 4] [--oracle-regions] [--oracle-text] [--device cuda]
           [--twins colours,shapes,places]

``--twins places`` keeps only the mirror image of each scene (the same two things, their
places swapped): the twin a dual encoder confuses most on the cells layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from vtsearch import Index
from vtsearch.fusion import FusionConfig, FusionScorer
from vtsearch.progress import NoProgress
from vtsearch.train import listwise_loss, load_pairs, match_logits, mine_examples, resolve_pairs, split_by_image

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
Scene = tuple[str, str, str]  # (first thing, "left of" | "above", second thing)


def scene_of(caption: str) -> Scene:
    """The scene a caption describes, whichever way it is phrased."""
    for relation, inverse in INVERSE.items():
        if f" {relation} " in caption:
            first, second = caption.split(f" {relation} ")
            return (first, relation, second) if relation in ("left of", "above") else (second, inverse, first)
    raise ValueError(f"not a shapes caption: {caption!r}")


TWIN_KINDS = ("colours", "shapes", "places")


def twin_scenes(scene: Scene) -> list[Scene]:
    """Colours swapped, shapes swapped, places swapped (as make_shapes.twins)."""
    (_, colour1, shape1), relation, (_, colour2, shape2) = scene[0].split(), scene[1], scene[2].split()

    def thing(colour: str, shape: str) -> str:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"

    return [(thing(colour2, shape1), relation, thing(colour1, shape2)),
            (thing(colour1, shape2), relation, thing(colour2, shape1)),
            (thing(colour2, shape2), relation, thing(colour1, shape1))]


class OracleRegions:
    """One-hot colour and shape at each thing's cell, from the pairs' recorded objects."""

    def __init__(self, index: Index, pairs_path: str, width: int):
        folder = Path(pairs_path).parent
        records = [json.loads(line) for split in ("train", "test_twins", "test_plain")
                   for line in open(folder / f"{split}.jsonl", encoding="utf-8")]
        if "objects" not in records[0]:
            raise SystemExit("--oracle-regions needs pairs from make_shapes.py --layout cells")
        ids = index.image_ids([str((folder / record["image"]).resolve()) for record in records])
        colours = sorted({o["colour"] for r in records for o in r["objects"]})
        shapes = sorted({o["shape"] for r in records for o in r["objects"]})
        self.rows: dict[int, torch.Tensor] = {}
        for record in records:
            regions = torch.zeros(index.regions.regions, width)  # the prefix (stage 1's vector) left empty
            for thing in record["objects"]:
                cell = index.regions.prefix + thing["cell"]
                regions[cell, colours.index(thing["colour"])] = 3.0
                regions[cell, len(colours) + shapes.index(thing["shape"])] = 3.0
            self.rows[ids[str((folder / record["image"]).resolve())]] = regions

    def regions(self, ids: list[int]) -> torch.Tensor:
        return torch.stack([self.rows[int(i)] for i in ids])


def oracle_text(captions: list[str], width: int) -> list[torch.Tensor]:
    """One-hot word (first half of the width) and position (second half) per token."""
    vocabulary = {word: n for n, word in enumerate(sorted({w for c in captions for w in c.split()}))}
    tokens = []
    for caption in captions:
        words = [*caption.split(), "<end>"]
        states = torch.zeros(len(words), width)
        for position, word in enumerate(words):
            states[position, vocabulary.get(word, len(vocabulary))] = 3.0
            states[position, width // 2 + position] = 3.0
        tokens.append(states)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs")
    parser.add_argument("--index", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--random-negatives", type=int, default=0)
    parser.add_argument("--oracle-regions", action="store_true")
    parser.add_argument("--oracle-text", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--twins", default=",".join(TWIN_KINDS),
                        help="which twins are the candidates, of colours,shapes,places (swapped)")
    args = parser.parse_args()
    args.twins = set(args.twins.split(","))
    torch.manual_seed(0)
    random.seed(0)
    rng = np.random.default_rng(0)

    index = Index.open(args.index, device="cpu")
    resolved = resolve_pairs(index, load_pairs(args.pairs))
    examples = mine_examples(index, resolved, 100, NoProgress())
    scenes = [scene_of(caption) for caption in resolved.captions]
    images_of: dict[Scene, list[int]] = defaultdict(list)
    for scene, image_id in zip(scenes, resolved.image_ids):
        images_of[scene].append(image_id)
    scene_by_image = dict(zip(resolved.image_ids, scenes))
    same = [sum(scene_by_image.get(int(i)) == scene for i in examples.neighbours[row][:5])
            for row, scene in enumerate(scenes)]
    print(f"{len(scenes)} captions of {len(images_of)} scenes; among each caption's 5 hardest stage-1 "
          f"negatives, {np.mean(same):.2f} show the very same scene (other phrasing)")

    width = index.embed_dim
    if args.oracle_text:
        examples = dataclasses.replace(examples, tokens=oracle_text(resolved.captions, width))

    def candidates(rows: list[int], extra: int = 0) -> np.ndarray:
        chosen = []
        for row in rows:
            pool = [i for kind, twin in zip(TWIN_KINDS, twin_scenes(scenes[row])) if kind in args.twins
                    for i in images_of.get(twin, [])]
            picks = rng.choice(pool, min(len(pool), 3), replace=False).tolist() if pool else []
            while len(picks) < 3:  # a family not all drawn in training: random other scenes
                pick = int(rng.choice(examples.image_ids))
                if scene_by_image.get(pick) != scenes[row]:
                    picks.append(pick)
            chosen.append([examples.positives[row], *picks, *rng.choice(examples.image_ids, extra).tolist()])
        return np.asarray(chosen, dtype=np.int64)

    train_rows, val_rows = split_by_image(resolved.images, 0.1, 0)
    val_rows = [row for row in val_rows if any(images_of.get(t) for t in twin_scenes(scenes[row]))]
    val_candidates = candidates(val_rows)
    layout, device = index.regions, torch.device(args.device)
    regions = OracleRegions(index, args.pairs, layout.dim) if args.oracle_regions else index.region_source
    scorer = FusionScorer(FusionConfig(text_dim=examples.tokens[0].shape[1], region_dim=layout.dim,
                                       grid=layout.grid, prefix=layout.prefix)).to(device)
    optimizer = torch.optim.AdamW([p for name, p in scorer.named_parameters() if name != "rerank_weight"],
                                  lr=args.lr, weight_decay=0.01)
    stage1 = examples.stage1(val_rows, val_candidates)
    for epoch in range(1, args.epochs + 1):
        scorer.train()
        random.shuffle(train_rows)
        losses = []
        for start in range(0, len(train_rows), 32):
            rows = train_rows[start:start + 32]
            chosen = candidates(rows, args.random_negatives)
            loss = listwise_loss(match_logits(scorer, examples, rows, chosen, regions, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scorer.eval()
        with torch.no_grad():
            match = np.concatenate([
                match_logits(scorer, examples, val_rows[s:s + 32], val_candidates[s:s + 32], regions, device).cpu().numpy()
                for s in range(0, len(val_rows), 32)])
        combined = max(float(np.mean((stage1 + w * match).argmax(1) == 0))
                       for w in (0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0))
        print(f"epoch {epoch}: train loss {np.mean(losses):.3f} (chance {math.log(4 + args.random_negatives):.3f}); "
              f"top-1 among twins: stage 1 {np.mean(stage1.argmax(1) == 0):.3f}, "
              f"match {np.mean(match.argmax(1) == 0):.3f}, combined {combined:.3f} ({len(val_rows)} captions)")


if __name__ == "__main__":
    main()
