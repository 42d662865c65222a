#!/usr/bin/env python3
"""Ingest throughput next to the bound set by the work it cannot avoid, in one run.

For each image set (small photos, and 12-megapixel JPEGs), with the same model:

- ``decode_ms``: reading, decoding and preprocessing one image alone (in this process,
  one at a time, JPEG draft mode as in a real run);
- ``encode_ms``: the bare encoder forward (global vector + region features) per image
  on pre-decoded tensors, in batches of ``--batch-size``;
- ``bound_images_per_s`` = 1 / (decode + encode): the rate if that CPU work ran back to
  back with nothing else (on 2 cores, decoding in worker processes can overlap encoding
  and pass it);
- ``images_per_s``: a real ``Index.add`` into a fresh index (scan, plan, decode workers,
  encode, region store, catalog commits, FAISS), and ``ratio`` = images_per_s / bound;
- ``encoder_images_per_s`` = 1 / encode, and ``ratio_vs_encoder``.

Each set runs in each ``--precision`` (float32, and bfloat16 where the CPU has it: see
``vtsearch.encoder.precision``); the last line gives bf16 / fp32 for the encoder and
for the whole ingest, and the bf16 probe vector's cosine to fp32.

The model is open_clip's ViT-B-32 with random weights (the cost is that of the
pretrained model; nothing is downloaded).

    python scripts/bench_ingest.py [--small 192] [--large 48] [--workers N] [--precision fp32 bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw

from vtsearch import Index, IngestOptions
from vtsearch.build.scan import scan
from vtsearch.config import EncoderSpec, RegionLayout
from vtsearch.decode import decode_file
from vtsearch.encoder import Encoder
from vtsearch.encoder.precision import cpu_has_bf16


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like picture: smooth gradients, a few shapes, mild noise (JPEGs of usual size)."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(width // 20, width // 5))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_set(folder: Path, count: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True)
    for number in range(count):
        photo(size, number).save(folder / f"photo_{number:05d}.jpg", quality=90)


def measure(name: str, folder: Path, encoder: Encoder, options: IngestOptions, layout: RegionLayout, workdir: Path) -> dict:
    files = scan([folder]).candidates
    config = encoder.decode_config()
    started = time.perf_counter()
    pixels = [decode_file(scanned, config, encoder.preprocess).pixels for scanned in files]
    decode_s = (time.perf_counter() - started) / len(files)

    encoder.encode_image_features(torch.stack(pixels[:2]), layout)  # warm up
    started = time.perf_counter()
    for start in range(0, len(pixels), options.batch_size):
        encoder.encode_image_features(torch.stack(pixels[start:start + options.batch_size]), layout)
    encode_s = (time.perf_counter() - started) / len(files)

    with Index.create(workdir / f"index-{name}-{encoder.precision}", encoder=encoder) as index:
        summary = index.add([folder], options)
    assert summary.indexed == len(files), summary
    rate = summary.indexed / summary.seconds
    bound = 1.0 / (decode_s + encode_s)
    megapixels = Image.open(files[0].path).size
    return {
        "set": name, "precision": encoder.precision, "images": len(files), "pixels": f"{megapixels[0]}x{megapixels[1]}",
        "workers": options.workers, "batch_size": options.batch_size,
        "decode_ms": round(decode_s * 1000, 2), "encode_ms": round(encode_s * 1000, 2),
        "images_per_s": round(rate, 2), "bound_images_per_s": round(bound, 2), "ratio": round(rate / bound, 3),
        "encoder_images_per_s": round(1.0 / encode_s, 2), "ratio_vs_encoder": round(rate * encode_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--small", type=int, default=192, help="640 x 480 JPEGs")
    parser.add_argument("--large", type=int, default=48, help="4000 x 3000 (12 MP) JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decode processes [default: as vtsearch index]")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                        default=["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()

    options = IngestOptions(batch_size=args.batch_size,
                            **({} if args.workers is None else {"workers": args.workers}))
    rows, agreement = [], None
    with tempfile.TemporaryDirectory(prefix="vtsearch-bench-ingest-") as temp:
        workdir = Path(temp)
        for name, count, size in (("small", args.small, (640, 480)), ("12MP", args.large, (4000, 3000))):
            if count:
                write_set(workdir / name, count, size)
        for precision in args.precision:
            encoder = random_encoder_in(args.model, precision)
            agreement = encoder.bf16_agreement or agreement
            layout = encoder.region_layout()
            for name, count in (("small", args.small), ("12MP", args.large)):
                if count:
                    rows.append(measure(name, workdir / name, encoder, options, layout, workdir))
    print_rows(rows, args.json)
    print_ratios(rows, agreement, args.json)


def random_encoder_in(model: str, precision: str) -> Encoder:
    """``model`` with seeded random weights, run in ``precision`` on the CPU."""
    torch.manual_seed(0)
    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    return Encoder(EncoderSpec(model, "random-init"), network, preprocess, open_clip.get_tokenizer(model),
                   torch.device("cpu"), precision)


def print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'set':>6} {'prec':>5} {'images':>6} {'decode ms':>9} {'encode ms':>9} {'bound/s':>8} {'index/s':>8} "
          f"{'ratio':>6} {'encoder/s':>9} {'vs enc':>6}")
    for row in rows:
        print(f"{row['set']:>6} {row['precision']:>5} {row['images']:>6} {row['decode_ms']:>9.1f} "
              f"{row['encode_ms']:>9.1f} {row['bound_images_per_s']:>8.2f} {row['images_per_s']:>8.2f} "
              f"{row['ratio']:>6.2f} {row['encoder_images_per_s']:>9.2f} {row['ratio_vs_encoder']:>6.2f}")


def print_ratios(rows: list[dict], agreement: float | None, as_json: bool) -> None:
    """bf16 / fp32, per set: the bare encoder and the whole ingest."""
    by_key = {(row["set"], row["precision"]): row for row in rows}
    for name in dict.fromkeys(row["set"] for row in rows):
        fp32, bf16 = by_key.get((name, "fp32")), by_key.get((name, "bf16"))
        if not (fp32 and bf16):
            continue
        ratios = {"set": name,
                  "bf16_over_fp32_encoder": round(bf16["encoder_images_per_s"] / fp32["encoder_images_per_s"], 2),
                  "bf16_over_fp32_ingest": round(bf16["images_per_s"] / fp32["images_per_s"], 2),
                  "bf16_probe_cosine": agreement}
        print(json.dumps(ratios) if as_json else
              f"{name}: bf16/fp32 encoder x{ratios['bf16_over_fp32_encoder']}, ingest "
              f"x{ratios['bf16_over_fp32_ingest']} (probe cosine to fp32 {agreement:.5f})")


if __name__ == "__main__":
    main()
