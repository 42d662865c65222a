#!/usr/bin/env python3
"""Cold ``vtsearch search`` latency next to the least a script could do, in one run.

Both start a fresh Python process and end when results are printed:

- ``cli``: ``vtsearch search TEXT --index DIR -k 5`` on a small index;
- ``bare``: a script that imports torch and open_clip, builds the same model from the
  same weight file, encodes the text, and ranks the index's vectors (held in a .npy
  file) with numpy: what any open_clip search must pay.

The model is open_clip's ViT-B-32 with random weights, written once in open_clip's
``local-dir`` layout (nothing is downloaded). Each command runs ``--runs`` times after
one warm-up run (the OS file cache is warm for both); the medians and their ratio are
printed.

    python scripts/bench_cli.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchkit import write_random_model

MODEL = "ViT-B-32"
QUERY = "a dog on a beach"

BARE = textwrap.dedent("""
    import sys
    import numpy as np
    import open_clip
    import torch
    model_dir, vectors_file, query = sys.argv[1:4]
    model, _, _ = open_clip.create_model_and_transforms(
        "local-dir:" + model_dir)
    model.eval()
    tokenizer = open_clip.get_tokenizer("local-dir:" + model_dir)
    with torch.inference_mode():
        text = model.encode_text(tokenizer([query]))
    text = (text / text.norm(dim=-1, keepdim=True))[0].numpy()
    scores = np.load(vectors_file) @ text
    for rank, i in enumerate(np.argsort(-scores)[:5], 1):
        print(rank, i, scores[i])
""")


def timed(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, check=True, capture_output=True)  # warm-up: file cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vtsearch-bench-cli-") as temp:
        root = Path(temp)
        write_random_model(root / "model", MODEL)
        photos = root / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for number in range(args.images):
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photos / f"{number:03d}.jpg")
        vtsearch = Path(sys.executable).with_name("vtsearch")
        cli = [str(vtsearch)] if vtsearch.exists() else [sys.executable, "-m", "vtsearch.cli"]
        index = root / "index"
        subprocess.run([*cli, "index", str(photos), "--index", str(index), "--model",
                        f"local-dir:{root / 'model'}", "--workers", "0"], check=True, capture_output=True)
        from vtsearch import Index

        with Index.open(index, device="cpu") as opened:
            vectors = opened.catalog.vectors(opened.catalog.indexed_ids().tolist(), opened.manifest.embed_dim)
        np.save(root / "vectors.npy", vectors)
        (root / "bare.py").write_text(BARE)

        cli_times = timed([*cli, "search", QUERY, "--index", str(index), "-k", "5"], args.runs)
        bare_times = timed([sys.executable, str(root / "bare.py"), str(root / "model"),
                            str(root / "vectors.npy"), QUERY], args.runs)
    result = {
        "model": MODEL, "images": args.images, "runs": args.runs,
        "cli_s": round(statistics.median(cli_times), 3), "bare_s": round(statistics.median(bare_times), 3),
        "ratio": round(statistics.median(cli_times) / statistics.median(bare_times), 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"cold vtsearch search {result['cli_s']:.2f} s, bare open_clip script {result['bare_s']:.2f} s: "
          f"{result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
