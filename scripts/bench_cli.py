#!/usr/bin/env python3
"""How fast the ``vtsearch`` command starts, next to the least Python could do, in one run.

Every measurement starts a fresh Python process:

- ``help``: ``vtsearch --help`` next to ``python -c pass``. The CLI imports torch,
  open_clip and FAISS only inside a command body, so asking for help costs Python's own
  start plus click (target: at most 0.5 s);
- ``search`` (skipped with ``--startup-only``): a cold ``vtsearch search TEXT --index DIR
  -k 5`` on a small index, next to a bare script that imports torch and open_clip, builds
  the same model from the same weight file, encodes the text, and ranks the index's
  vectors (read through ``Index.embeddings()`` into a .npy file) with numpy: what any
  open_clip search must pay.

The model is open_clip's ViT-B-32 with random weights, written once in open_clip's
``local-dir`` layout (nothing is downloaded). Each command runs ``--runs`` times after
one warm-up run (the OS file cache is warm for all); the medians and their ratios are
printed.

    python scripts/bench_cli.py [--runs 5] [--startup-only] [--json]
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

MODEL = "ViT-B-32"
QUERY = "a dog on a beach"
HELP_TARGET_S = 0.5

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


def vtsearch_command() -> list[str]:
    """The installed ``vtsearch`` script beside this Python, else ``python -m vtsearch.cli``."""
    script = Path(sys.executable).with_name("vtsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vtsearch.cli"]


def median_seconds(command: list[str], runs: int) -> float:
    """Median wall time of ``runs`` fresh runs of ``command``, after one warm-up run."""
    subprocess.run(command, check=True, capture_output=True)  # warm-up: file cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(cli: list[str], baseline: list[str], runs: int) -> dict[str, float]:
    cli_s, baseline_s = median_seconds(cli, runs), median_seconds(baseline, runs)
    return {"cli_s": round(cli_s, 3), "baseline_s": round(baseline_s, 3), "ratio": round(cli_s / baseline_s, 3)}


def bench_help(runs: int) -> dict[str, float]:
    """``vtsearch --help`` against ``python -c pass``."""
    return compare([*vtsearch_command(), "--help"], [sys.executable, "-c", "pass"], runs)


def bench_search(root: Path, images: int, runs: int) -> dict[str, float]:
    """A cold ``vtsearch search`` against the bare open_clip script, on a fresh index under ``root``."""
    import numpy as np

    from benchkit import write_random_model, write_random_photos
    from vtsearch import Index

    write_random_model(root / "model", MODEL)
    photos = root / "photos"
    write_random_photos(photos, images)
    cli, index = vtsearch_command(), root / "index"
    subprocess.run([*cli, "index", str(photos), "--index", str(index), "--model",
                    f"local-dir:{root / 'model'}", "--workers", "0"], check=True, capture_output=True)
    with Index.open(index, device="cpu") as opened:
        vectors = np.concatenate([chunk for _ids, chunk in opened.embeddings()])
    np.save(root / "vectors.npy", vectors)
    (root / "bare.py").write_text(BARE)
    return compare([*cli, "search", QUERY, "--index", str(index), "-k", "5"],
                   [sys.executable, str(root / "bare.py"), str(root / "model"), str(root / "vectors.npy"), QUERY],
                   runs)


def print_table(result: dict) -> None:
    help_ = result["help"]
    verdict = "within" if help_["cli_s"] <= HELP_TARGET_S else "over"
    print(f"vtsearch --help {help_['cli_s']:.3f} s, python -c pass {help_['baseline_s']:.3f} s: "
          f"{help_['ratio']:.2f}x ({verdict} the {HELP_TARGET_S} s target)")
    if "search" in result:
        search = result["search"]
        print(f"cold vtsearch search {search['cli_s']:.2f} s, bare open_clip script {search['baseline_s']:.2f} s: "
              f"{search['ratio']:.2f}x ({result['model']}, {result['images']} images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="images in the search benchmark's index")
    parser.add_argument("--startup-only", action="store_true", help="time vtsearch --help only (seconds, not minutes)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    result: dict = {"runs": args.runs, "help": bench_help(args.runs)}
    if not args.startup_only:
        with tempfile.TemporaryDirectory(prefix="vtsearch-bench-cli-") as temp:
            result.update(model=MODEL, images=args.images, search=bench_search(Path(temp), args.images, args.runs))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
