#!/usr/bin/env python3
"""Within-family accuracy on twin families: which of a family's images ranks first.

``make_shapes.py`` writes its test twins with a ``family`` number (four scenes with the
same words in other bindings) and ``held_out`` (the scene has a colour–shape combination
never seen in training). For every caption this scores its family's four images, by
stage 1 alone and by the final score of the index's reranker (as a search would), and
counts how often its own image is first. Families with a held-out combination are
reported apart. Chance is 0.25.

    python scripts/eval_families.py DATA/test_twins.jsonl --index INDEX [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from vtsearch.index import Index


def load_families(path: Path) -> dict[int, list[dict]]:
    families: dict[int, list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "family" not in record:
                raise SystemExit(f"{path}: no 'family' field; write it with scripts/make_shapes.py")
            record["image"] = os.path.abspath(path.parent / record["image"])
            families[int(record["family"])].append(record)
    return families


def family_accuracy(index: Index, families: dict[int, list[dict]]) -> dict[str, dict[str, float]]:
    hits: dict[str, dict[str, list[bool]]] = {"all": defaultdict(list), "held_out": defaultdict(list),
                                               "seen": defaultdict(list)}
    reranker, regions = index.reranker, index.region_source
    for members in families.values():
        ids = index.image_ids([member["image"] for member in members])
        member_ids = [ids[member["image"]] for member in members]
        vectors = index.vectors(member_ids)  # (4, D)
        family_regions = regions.regions(member_ids) if regions is not None else None
        features = index.encoder.encode_text_features([member["caption"] for member in members])
        group = "held_out" if any(member.get("held_out") for member in members) else "seen"
        for right in range(len(members)):
            stage1 = (vectors @ features.vectors[right]).astype(np.float32)
            final = stage1
            if reranker is not None and family_regions is not None:
                final = reranker.rerank(features.tokens[right], features.ids[right], stage1, family_regions).final
            for name, scores in (("stage1", stage1), ("reranked", final)):
                first = int(np.argmax(scores)) == right
                hits["all"][name].append(first)
                hits[group][name].append(first)
    return {group: {name: round(float(np.mean(values)), 3) for name, values in scores.items()} | {
        "captions": len(next(iter(scores.values()), []))} for group, scores in hits.items() if scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, help="test_twins.jsonl written by make_shapes.py")
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with Index.open(args.index) as index:
        report = family_accuracy(index, load_families(args.pairs))
    if args.json:
        print(json.dumps(report))
        return
    print("within-family top-1 (chance 0.25)   stage 1   reranked   captions")
    for group, row in report.items():
        print(f"  {group:<33} {row['stage1']:>7.3f}   {row['reranked']:>8.3f}   {row['captions']:>8}")


if __name__ == "__main__":
    main()
