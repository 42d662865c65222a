#!/usr/bin/env python3
"""Train a small CLIP from scratch on a captioned image set, offline, on a CPU.

Uses open_clip's own model class (``open_clip.CLIP``) and contrastive loss
(``open_clip.ClipLoss``), and saves the result in open_clip's ``local-dir`` layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``), so vtsearch loads it with
``--model local-dir:DIR`` exactly as it would load any open_clip model.

The point is a real stage 1 with the real dual-encoder weakness: trained on in-batch
negatives, it learns which colours, shapes and relation words are present, but not
which colour belongs to which shape or which thing is on the left.

    python scripts/train_clip.py DATA/train.jsonl OUT_DIR [--epochs 12] [--family-batches]

An image listed under several captions is seen once per epoch, under one of them drawn
at random.

``--family-batches`` keeps captions with the same words (twins) in the same batch, so the
contrastive loss has to tell them apart by shapes and places, not by colours alone.

The images ``vtsearch train-reranker`` will validate on (with its defaults; the split is
a hash of each file's name: ``vtsearch.train.pairs.validation_images``) are left out, so that its
validation sees this model as a user's photos would, new to it, and fits the fused
weight for that; ``--train-on-all`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from vtsearch.train.loop import TrainOptions
from vtsearch.train.pairs import validation_images

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def model_config(image_size: int, patch_size: int = 16, context_length: int = 16) -> dict:
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": image_size, "layers": 4, "width": 128, "head_width": 32,
                       "patch_size": patch_size},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 128, "heads": 4,
                     "layers": 4},
    }


def load_pairs(pairs_path: Path, image_size: int,
               leave_out: TrainOptions | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """Normalised pixels (N, 3, S, S) of each distinct image, and each image's captions;
    without the images ``train-reranker`` with ``leave_out``'s split validates on."""
    root = pairs_path.parent
    captions: dict[str, list[str]] = {}
    with open(pairs_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            captions.setdefault(record["image"], []).append(record["caption"])
    if leave_out is not None:
        for image in validation_images(captions, leave_out.val_fraction, leave_out.seed):
            del captions[image]
    images = [np.asarray(Image.open(root / path).convert("RGB").resize((image_size, image_size)))
              for path in captions]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std, list(captions.values())


def caption_tokens(image_captions: list[list[str]], context_length: int) -> torch.Tensor:
    """(choices, N, ctx) token ids: row n holds each image's n-th caption (an image with
    fewer captions repeats its own), so an epoch picks one per image by indexing."""
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    choices = max(len(texts) for texts in image_captions)
    return torch.stack([tokenizer([texts[n % len(texts)] for texts in image_captions]) for n in range(choices)])


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over a tenth of ``total`` steps, then a cosine decay to 0."""
    total = max(1, total)
    warmup = max(1, total // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
    )


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, loss: torch.Tensor) -> None:
    """One step on ``loss``, with the contrastive temperature held within CLIP's bound (100)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def family_order(captions: list[str]) -> torch.Tensor:
    """A shuffled order in which captions with the same words (twins: other binding) sit
    next to each other, so most batches hold whole families: telling them apart takes
    shapes and places, not just colours. Repeats of one caption are spread out."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, caption in enumerate(captions):
        groups.setdefault(tuple(sorted(caption.split())), []).append(row)
    blocks, spare = [], []
    for rows in groups.values():
        seen: set[str] = set()
        block = []
        for row in random.sample(rows, len(rows)):
            (spare if captions[row] in seen else block).append(row)
            seen.add(captions[row])
        blocks.append(block)
    blocks += [[row] for row in spare]
    random.shuffle(blocks)
    return torch.tensor([row for block in blocks for row in block])


def train(pairs_path: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int,
          image_size: int, family_batches: bool = False, device: str = "cpu", patch_size: int = 16,
          context_length: int = 16, train_on_all: bool = False) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    config = model_config(image_size, patch_size, context_length)
    model = open_clip.CLIP(**config).to(device)
    pixels, image_captions = load_pairs(pairs_path, image_size, None if train_on_all else TrainOptions())
    tokens = caption_tokens(image_captions, context_length)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps_per_epoch = len(image_captions) // batch_size
    total = epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, total)
    print(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M-parameter CLIP "
          f"on {len(image_captions)} images, {epochs} epochs of {steps_per_epoch} steps")
    started = time.perf_counter()
    model.train()
    with tqdm(total=total, unit="step", mininterval=5) as bar:
        for epoch in range(epochs):
            # one caption per image and epoch, drawn from the image's own
            picks = torch.randint(len(tokens), (len(image_captions),))
            captions = [texts[int(pick) % len(texts)] for texts, pick in zip(image_captions, picks)]
            order = family_order(captions) if family_batches else torch.randperm(len(captions))
            for step in range(steps_per_epoch):
                batch = order[step * batch_size:(step + 1) * batch_size]
                batch_tokens = tokens[picks[batch], batch].to(device)  # (B, ctx)
                image_features, text_features, logit_scale = model(pixels[batch].to(device), batch_tokens)
                loss = loss_fn(image_features, text_features, logit_scale)
                optimizer_step(model, optimizer, scheduler, loss)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    print(f"trained in {time.perf_counter() - started:.0f} s")
    save(model, config, image_size, out)


def save(model: torch.nn.Module, config: dict, image_size: int, out: Path) -> None:
    """The model in open_clip's local-dir layout (config + safetensors)."""
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": image_size, "mean": list(MEAN), "std": list(STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    print(f"saved local-dir:{out.resolve()}")


def training_arguments(description: str) -> argparse.ArgumentParser:
    """The options this script and ``train_coca.py`` share: data, output, schedule, model shape."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, help="JSON Lines of {image, caption}")
    parser.add_argument("out", type=Path, help="model folder to write (local-dir layout)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family-batches", action="store_true",
                        help="batch captions that share their words together (train_clip.family_order)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--patch-size", type=int, default=16,
                        help="ViT patch: 16 gives the demo's 4 x 4 region grid at 64 px, 8 an 8 x 8 one")
    parser.add_argument("--context-length", type=int, default=16, help="text tokens, start and end included")
    return parser


def main() -> None:
    parser = training_arguments(__doc__)
    parser.add_argument("--train-on-all", action="store_true",
                        help="train on the images train-reranker validates on too")
    args = parser.parse_args()
    train(args.pairs, args.out, args.epochs, args.batch_size, args.lr, args.seed, args.image_size,
          args.family_batches, args.device, args.patch_size, args.context_length, args.train_on_all)


if __name__ == "__main__":
    main()
