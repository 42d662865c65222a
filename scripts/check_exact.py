#!/usr/bin/env python3
"""Check stage 1 against brute force: ``vtsearch search --json`` must return exactly the
images that brute-force cosine similarity with the same model ranks first.

The reference re-decodes and re-encodes every image file itself (not the catalog's
stored vectors), so it checks the whole build path: scan, decode, encode, catalog, FAISS.
Queries run through the real CLI in a subprocess (``--no-rerank``: stage 1 is what is
exact). Also checks that a second ``vtsearch index`` run re-encodes nothing.

    python scripts/check_exact.py INDEX_DIR IMAGE_FOLDER [--queries 20] [-k 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from vtsearch import Index
from vtsearch.build.scan import scan
from vtsearch.decode import decode_batches
from vtsearch.records import DecodedImage

QUERIES = ["a red circle left of a blue square", "a green triangle above a white cross",
           "a yellow diamond", "a black square below an orange circle", "a photo of a dog",
           "purple", "two shapes", "a blue cross right of a red diamond"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("folder")
    parser.add_argument("--queries", type=int, default=len(QUERIES))
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    with Index.open(args.index, device="cpu") as index:
        encoder = index.encoder
        config = encoder.decode_config()
        paths, vectors = [], []
        started = time.perf_counter()
        files = scan([args.folder]).candidates
        for batch in decode_batches(files, config, encoder.preprocess, 64, workers=2):
            decoded = [o for o in batch if isinstance(o, DecodedImage)]
            if decoded:
                vectors.append(encoder.encode_images(torch.stack([o.pixels for o in decoded])))
                paths.extend(o.source.path for o in decoded)
        reference = np.concatenate(vectors)
        print(f"re-encoded {len(paths)} images for the reference in {time.perf_counter() - started:.1f} s")
        texts = (QUERIES * (1 + args.queries // len(QUERIES)))[: args.queries]
        query_vectors = encoder.encode_texts(texts)

    mismatches = 0
    for text, query in zip(texts, query_vectors):
        scores = reference @ query
        expected = [paths[i] for i in np.argsort(-scores, kind="stable")[: args.k]]
        output = subprocess.run(
            [sys.executable, "-m", "vtsearch.cli", "search", text, "--index", args.index, "-k", str(args.k),
             "--no-rerank", "--json"], capture_output=True, text=True, check=True).stdout
        got = [hit["path"] for hit in json.loads(output)["results"]]
        if got != expected:
            # equal scores may swap places; anything else is a real mismatch
            got_scores = np.sort(scores[[paths.index(p) for p in got]])[::-1]
            if not np.allclose(got_scores, np.sort(scores)[::-1][: args.k], atol=1e-5):
                mismatches += 1
                print(f"MISMATCH for {text!r}:\n  got      {got}\n  expected {expected}")
    print(f"{args.queries} queries, top {args.k}: {mismatches} mismatches against brute force")

    rerun = subprocess.run([sys.executable, "-m", "vtsearch.cli", "index", args.folder, "--index", args.index,
                            "--json"], capture_output=True, text=True, check=True).stdout
    summary = json.loads(rerun)
    print(f"second index run: indexed {summary['indexed']}, unchanged {summary['unchanged']}, "
          f"{summary['seconds']} s")
    sys.exit(1 if mismatches or summary["indexed"] else 0)


if __name__ == "__main__":
    main()
