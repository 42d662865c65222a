#!/usr/bin/env python3
"""Train a small CoCa from scratch on a captioned image set, offline, on a CPU.

Uses open_clip's own model class (``open_clip.CoCa``) and loss (``open_clip.CoCaLoss``:
contrastive + captioning), and saves the result in open_clip's ``local-dir`` layout, so
``vtsearch index --model local-dir:DIR`` loads it as any CoCa: stage 1 from its
contrastive embeddings, stage 2 from its text decoder, with no ``train-reranker``.

The point is the offline proof of the pretrained stage 2: the same data and the same
kind of small model as ``scripts/train_clip.py`` (64 px, 4 x 4 patches, width 128), plus a
decoder that learns to caption. Its contrastive half has the dual-encoder weakness (which
colour belongs to which shape, which is on the left); its captioning half has to say
"red … left of … blue" token by token while looking at the image.

    python scripts/train_coca.py DATA/train.jsonl OUT_DIR [--epochs 12] [--family-batches]
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from train_clip import caption_tokens, family_order, load_pairs, save, training_arguments, warmup_cosine


def model_config(image_size: int, patch_size: int = 16, context_length: int = 16, decoder_layers: int = 3,
                 image_tokens: int = 32) -> dict:
    """A CoCa as small as the demo's CLIP; the pooler gives the decoder ``image_tokens``."""
    text = {"context_length": context_length, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}
    return {
        "embed_dim": 128, "custom_text": True,
        "vision_cfg": {"image_size": image_size, "layers": 4, "width": 128, "head_width": 32,
                       "patch_size": patch_size, "attentional_pool": True, "attn_pooler_queries": image_tokens + 1,
                       "attn_pooler_heads": 4, "output_tokens": True},
        "text_cfg": {**text, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {**text, "layers": decoder_layers},
    }


def build(config: dict, device: str) -> open_clip.CoCa:
    """open_clip's CoCa, with the decoder's output projection initialised (open_clip
    leaves it empty for a model made without weights)."""
    model = open_clip.CoCa(**{k: v for k, v in config.items() if k != "custom_text"}).to(device)
    decoder = model.text_decoder
    torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return model


def train(pairs_path: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int, image_size: int,
          family_batches: bool = False, device: str = "cpu", patch_size: int = 16, context_length: int = 16,
          caption_weight: float = 2.0, init: Path | None = None) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    config = model_config(image_size, patch_size, context_length)
    model = build(config, device)
    if init is not None:  # go on from a model this script saved (a new learning-rate schedule)
        model.load_state_dict(load_file(str(init / "open_clip_model.safetensors")))
    pixels, image_captions = load_pairs(pairs_path, image_size)
    tokens = caption_tokens(image_captions, context_length)
    loss_fn = open_clip.CoCaLoss(caption_loss_weight=caption_weight, clip_loss_weight=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps_per_epoch = len(image_captions) // batch_size
    total = epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, total)
    print(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M-parameter CoCa "
          f"on {len(image_captions)} images, {epochs} epochs of {steps_per_epoch} steps")
    started = time.perf_counter()
    model.train()
    with tqdm(total=total, unit="step", mininterval=5) as bar:
        for epoch in range(epochs):
            picks = torch.randint(len(tokens), (len(image_captions),))  # one caption per image and epoch
            captions = [texts[int(pick) % len(texts)] for texts, pick in zip(image_captions, picks)]
            order = family_order(captions) if family_batches else torch.randperm(len(captions))
            for step in range(steps_per_epoch):
                batch = order[step * batch_size:(step + 1) * batch_size]
                output = model(pixels[batch].to(device), tokens[picks[batch], batch].to(device))
                contrastive, caption = loss_fn(output["image_features"], output["text_features"], output["logits"],
                                               output["labels"], output["logit_scale"])
                optimizer.zero_grad(set_to_none=True)
                (contrastive + caption).backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                bar.set_postfix(epoch=epoch + 1, clip=f"{contrastive.item():.3f}", caption=f"{caption.item():.3f}",
                                refresh=False)
                bar.update()
    print(f"trained in {time.perf_counter() - started:.0f} s")
    save(model, config, image_size, out)


def main() -> None:
    parser = training_arguments(__doc__)
    parser.add_argument("--caption-weight", type=float, default=2.0, help="CoCaLoss caption_loss_weight")
    parser.add_argument("--init", type=Path, help="start from the weights this script saved in this folder")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's choice; 1 is ~10x faster on a CPU another job shares)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args.pairs, args.out, args.epochs, args.batch_size, args.lr, args.seed, args.image_size,
          args.family_batches, args.device, args.patch_size, args.context_length, args.caption_weight, args.init)


if __name__ == "__main__":
    main()
