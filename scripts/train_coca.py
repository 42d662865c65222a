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
"red … left of … blue" token by token while looking at the image. ``--swap-weight``
adds, from halfway, what ``train-reranker --swaps`` adds for the fusion scorer: each
caption must be likelier under its image, per token, than a variant of itself with two
words of one kind traded (the decoder's swap epochs cost about twice a plain one).
``--position-weight`` adds a loss that keeps a loud code of each image token's place in the
token before the pooler (``PositionCodes``). ``--decoder-epochs`` then trains a fresh
pooler and decoder on the frozen towers (``train_decoder``). The two together are what
make the decoder bind (``scripts/demo.sh`` with ``DEMO_MODEL=coca``: ``--epochs 14
--family-batches --position-weight 1 --decoder-epochs 48``; which twin ranks first
0.482 -> 0.955 by the decoder on the demo set, 0.318 -> 0.660 with 96 decoder epochs on
the varied set; README, docs/reranker-notes.md). The decoder's output words are the
training captions' (``--vocabulary captions``, the default: the others' columns held at
zero, ``CaptionVocabulary``), which makes training 3-6x faster and a search's decoder
cheaper.

    python scripts/train_coca.py DATA/train.jsonl OUT_DIR [--epochs 14] [--family-batches] [--swap-weight 0.5]
                                 [--position-weight 1] [--decoder-epochs 48] [--init DIR]
                                 [--vocabulary captions|full] [--image-tokens 32]
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from train_clip import (caption_tokens, family_order, load_pairs, optimizer_step, save, training_arguments,
                        warmup_cosine)

DECODER_BATCH = 32  # the decoder phase's batch and peak learning rate (measured on the demo set)
DECODER_LR = 1e-3
POSITION_DIMS = 32  # the subspace of each image token that holds its position code
POSITION_SCALE = 2.0  # the code's std per dimension: a norm of ~11, as loud as a token's content
RENEWED = ("visual.attn_pool.", "visual.ln_post.", "visual.proj", "text_decoder.")  # what the decoder phase renews


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


def swap_loss(model: open_clip.CoCa, image_embs: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor,
              variants: torch.Tensor, has_variant: torch.Tensor,
              vocabulary: CaptionVocabulary | None = None) -> torch.Tensor:
    """Each caption against its word-swapped variant under its image (``train-reranker
    --swaps`` for the decoder): a softmax over their mean log-probability per token, the
    caption first. ``logits`` (B, T-1, V) are the decoder's for the captions ``tokens``
    (B, T); ``variants`` (B, T) the swapped captions, used where ``has_variant``; with a
    ``vocabulary`` the logits are over its words (``CaptionVocabulary.logits``)."""
    rows = has_variant.nonzero().squeeze(1)
    if len(rows) == 0:
        return logits.new_zeros(())
    _, states = model._encode_text(variants[rows])
    variant_logits = model.text_decoder(image_embs[rows], states[:, :-1])
    if vocabulary is not None:
        variant_logits = vocabulary.logits(variant_logits)
        tokens, variants = vocabulary.labels(tokens), vocabulary.labels(variants)
    scores = torch.stack([mean_log_prob(logits[rows], tokens[rows]), mean_log_prob(variant_logits, variants[rows])], 1)
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(rows), dtype=torch.long, device=scores.device))


class CaptionVocabulary:
    """The decoder's output layer kept to the words of the training captions.

    A caption's tokens are drawn from a few dozen of the tokenizer's 49,408. Trained over
    all of them, the output layer's product is most of a step's work, and the decoder
    learns the image-dependent part slowly (places from its fifteenth epoch, against the
    seventh with a small layer: docs/reranker-notes.md). Here the other words' output
    columns are held at zero: their logits are exactly 0, so the softmax over all 49,408
    is the softmax over the kept words plus one constant logit, log(number held at zero).
    Training computes that (``logits``); the saved model is an ordinary CoCa whose
    projection has zero columns (``expand``), and vtsearch's scorer computes the same
    probabilities from it (and skips the zero columns, ``vtsearch/query/decoder.py``)."""

    def __init__(self, *token_sets: torch.Tensor, size: int):
        kept = torch.unique(torch.cat([ids.reshape(-1) for ids in token_sets]))
        self.kept = torch.unique(torch.cat([kept, torch.zeros(1, dtype=kept.dtype)]))  # padding (0) first
        self.lookup = torch.zeros(size, dtype=torch.long)
        self.lookup[self.kept] = torch.arange(len(self.kept))
        self.rest = math.log(size - len(self.kept))  # the zero columns' share of the normaliser
        self.size = size

    def restrict(self, decoder: torch.nn.Module) -> None:
        """The decoder's (width, size) projection → its (width, kept) columns."""
        decoder.text_projection = torch.nn.Parameter(decoder.text_projection.detach()[:, self.kept].clone())

    def expand(self, decoder: torch.nn.Module) -> None:
        """Back to (width, size), zero outside the kept words: the layout that is saved."""
        kept = decoder.text_projection.detach()
        full = kept.new_zeros(kept.shape[0], self.size)
        full[:, self.kept] = kept
        decoder.text_projection = torch.nn.Parameter(full)

    def logits(self, kept_logits: torch.Tensor) -> torch.Tensor:
        """(..., kept) logits → (..., kept + 1): the last stands for all the zero columns."""
        return torch.cat([kept_logits, kept_logits.new_full((*kept_logits.shape[:-1], 1), self.rest)], dim=-1)

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids → their places among the kept words (padding stays 0, ignored by the loss)."""
        return self.lookup.to(ids.device)[ids]


class PositionCodes:
    """A fixed random code per token of the image tower before its pooler, to be held in a
    fixed random subspace of that token (``loss``): each token then says where it is as
    loudly as what it shows. CoCa's decoder attends to the pooled tokens as a set, and
    learns places only when they are loud there (docs/reranker-notes.md); open_clip puts
    positions in at the tower's input only, where they fade. The model stays open_clip's
    CoCa: the codes are a training loss, not a layer."""

    def __init__(self, tokens: int, width: int, dims: int, scale: float, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.basis = torch.linalg.qr(torch.randn(width, dims, generator=generator))[0]  # (width, dims), orthonormal
        self.codes = scale * torch.randn(tokens, dims, generator=generator)  # (tokens, dims)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean squared distance of (B, tokens, width) tokens' projections from their codes."""
        basis, codes = self.basis.to(tokens), self.codes.to(tokens)
        return (tokens @ basis - codes).pow(2).mean()


def train_decoder(model: open_clip.CoCa, config: dict, pixels: torch.Tensor, image_captions: list[list[str]],
                  tokens: torch.Tensor, epochs: int, caption_weight: float, device: str, seed: int,
                  vocabulary: CaptionVocabulary | None = None) -> list[float]:
    """The decoder phase: the image tower's trunk and the text tower frozen, the pooler
    (and its projection) and the text decoder trained afresh with ``CoCaLoss``.

    Trained jointly from the start, the pooler passes what tells things apart (colours,
    shapes) and drops where they are, and the decoder never learns the relation words. A
    fresh pooler and decoder on a finished trunk whose tokens carry loud position codes
    (``--position-weight``) learn them, late: with the full vocabulary from about the
    fifteenth epoch on the demo set; with the captions' words 24 epochs were not enough
    there and 48 bound (which twin first 0.955); the varied set's shapes came in between
    epochs 50 and 80 of 96 (docs/reranker-notes.md).

    The trunk's tokens are computed once. The pooler's first query stays the contrastive
    embedding, so stage 1 is retrained with it against the frozen text tower. Batches are
    drawn at random even where the joint phase batched families together: with whole
    families in a batch the contrastive term, which shares the pooler, kept the decoder
    from learning places. Returns each epoch's mean loss."""
    torch.manual_seed(seed + 1)
    fresh = build(config, device)
    visual = model.visual
    visual.attn_pool, visual.ln_post, visual.proj = fresh.visual.attn_pool, fresh.visual.ln_post, fresh.visual.proj
    model.text_decoder = fresh.text_decoder
    if vocabulary is not None:
        vocabulary.restrict(model.text_decoder)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = [*visual.attn_pool.parameters(), *visual.ln_post.parameters(), visual.proj,
               *model.text_decoder.parameters(), model.logit_scale]
    for parameter in trained:
        parameter.requires_grad_(True)
    model.eval()
    with torch.no_grad():
        trunk = torch.cat([visual.transformer(visual._embeds(pixels[start:start + 256].to(device)))
                           for start in range(0, len(pixels), 256)])  # (N, 1 + h*w, width): pooler input
    visual.attn_pool.train()
    model.text_decoder.train()
    loss_fn = open_clip.CoCaLoss(caption_loss_weight=caption_weight, clip_loss_weight=1.0)
    optimizer = torch.optim.AdamW(trained, lr=DECODER_LR, weight_decay=0.1)
    steps_per_epoch = max(1, len(image_captions) // DECODER_BATCH)  # one smaller batch for a tiny set
    scheduler = warmup_cosine(optimizer, epochs * steps_per_epoch)
    print(f"decoder phase: a fresh pooler and decoder on the frozen towers, {epochs} epochs of {steps_per_epoch} steps")
    started, losses = time.perf_counter(), []
    with tqdm(total=epochs * steps_per_epoch, unit="step", mininterval=5) as bar:
        for epoch in range(epochs):
            total = 0.0
            picks = torch.randint(len(tokens), (len(image_captions),))
            order = torch.randperm(len(image_captions))
            for step in range(steps_per_epoch):
                batch = order[step * DECODER_BATCH:(step + 1) * DECODER_BATCH]
                text = tokens[picks[batch], batch].to(device)
                pooled, image_embs = visual._pool(trunk[batch])
                image_latent = torch.nn.functional.normalize(pooled @ visual.proj, dim=-1)
                with torch.no_grad():
                    text_latent, states = model._encode_text(text)
                logits, labels = model.text_decoder(image_embs, states[:, :-1]), text[:, 1:]
                if vocabulary is not None:
                    logits, labels = vocabulary.logits(logits), vocabulary.labels(labels)
                contrastive, caption = loss_fn(image_latent, text_latent, logits, labels, model.logit_scale.exp())
                loss = contrastive + caption
                optimizer_step(model, optimizer, scheduler, loss)
                bar.set_postfix(epoch=epoch + 1, clip=f"{contrastive.item():.3f}", caption=f"{caption.item():.3f}",
                                refresh=False)
                bar.update()
                total += loss.item()
            losses.append(total / steps_per_epoch)
    print(f"decoder phase in {time.perf_counter() - started:.0f} s")
    return losses


def load_init(model: open_clip.CoCa, init: Path, renewed: bool) -> None:
    """Load the weights this script saved in ``init``. With ``renewed`` (a decoder phase
    follows, which starts the pooler and decoder afresh) those parts may differ in shape,
    e.g. another ``--image-tokens``: they keep their fresh weights."""
    state, own = load_file(str(init / "open_clip_model.safetensors")), model.state_dict()
    if renewed:
        state = {name: value for name, value in state.items()
                 if not (name.startswith(RENEWED) and value.shape != own[name].shape)}
    model.load_state_dict(state, strict=not renewed)


def mean_log_prob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) mean log-probability of each text's tokens after the first (padding is id 0)."""
    following = tokens[:, 1:]
    picked = logits.float().log_softmax(-1).gather(-1, following[..., None]).squeeze(-1)
    real = (following != 0).float()
    return (picked * real).sum(1) / real.sum(1).clamp(min=1)


def swap_tokens(image_captions: list[list[str]], tokens: torch.Tensor, context_length: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(choices, N, ctx) token ids of one word-swapped variant of each caption (the word
    kinds read off the captions, as ``train-reranker`` does), and which captions have one."""
    from vtsearch.train.mining import WordKinds

    kinds = WordKinds([text for texts in image_captions for text in texts])
    rng = np.random.default_rng(seed)
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    variants = torch.zeros_like(tokens)
    has = torch.zeros(tokens.shape[:2], dtype=torch.bool)
    for choice in range(tokens.shape[0]):
        texts = [captions[choice % len(captions)] for captions in image_captions]
        swapped = [(kinds.swaps(text, 1, rng) or [""])[0] for text in texts]
        variants[choice] = tokenizer([text or "." for text in swapped])
        has[choice] = torch.tensor([bool(text) for text in swapped])
    return variants, has


def train(pairs_path: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int, image_size: int,
          family_batches: bool = False, device: str = "cpu", patch_size: int = 16, context_length: int = 16,
          caption_weight: float = 2.0, init: Path | None = None, swap_weight: float = 0.0,
          position_weight: float = 0.0, decoder_epochs: int = 0, vocabulary: str = "captions",
          image_tokens: int = 32) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    config = model_config(image_size, patch_size, context_length, image_tokens=image_tokens)
    model = build(config, device)
    if init is not None:  # go on from a model this script saved (a new learning-rate schedule)
        load_init(model, init, renewed=bool(decoder_epochs))
    pixels, image_captions = load_pairs(pairs_path, image_size)
    tokens = caption_tokens(image_captions, context_length)
    if swap_weight:
        variants, has_variant = swap_tokens(image_captions, tokens, context_length, seed)
        print(f"word swaps from epoch {epochs // 2 + 1}: {int(has_variant.sum())} of {has_variant.numel()} captions")
    words = None
    if vocabulary == "captions":
        words = CaptionVocabulary(tokens, *([variants] if swap_weight else []), size=config["text_cfg"]["vocab_size"])
        words.restrict(model.text_decoder)
        print(f"the decoder's output layer: the captions' {len(words.kept)} tokens, the rest held at zero")
    codes, seen = None, {}
    if position_weight:
        grid = image_size // patch_size
        codes = PositionCodes(1 + grid * grid, config["vision_cfg"]["width"], POSITION_DIMS, POSITION_SCALE, seed)
        model.visual.attn_pool.register_forward_hook(lambda _module, args, _output: seen.update(tokens=args[0]))
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
                text = tokens[picks[batch], batch].to(device)
                image_latent, image_embs = model._encode_image(pixels[batch].to(device))
                output = model(None, text, image_latent=image_latent, image_embs=image_embs)
                logits, labels = output["logits"], output["labels"]
                if words is not None:
                    logits, labels = words.logits(logits), words.labels(labels)
                contrastive, caption = loss_fn(output["image_features"], output["text_features"], logits, labels,
                                               output["logit_scale"])
                loss = contrastive + caption
                if codes is not None:
                    loss = loss + position_weight * codes.loss(seen["tokens"])
                if swap_weight and epoch >= epochs // 2:
                    loss = loss + swap_weight * swap_loss(model, image_embs, logits, text,
                                                          variants[picks[batch], batch].to(device),
                                                          has_variant[picks[batch], batch].to(device), words)
                optimizer_step(model, optimizer, scheduler, loss)
                bar.set_postfix(epoch=epoch + 1, clip=f"{contrastive.item():.3f}", caption=f"{caption.item():.3f}",
                                refresh=False)
                bar.update()
    print(f"trained in {time.perf_counter() - started:.0f} s")
    if decoder_epochs:
        train_decoder(model, config, pixels, image_captions, tokens, decoder_epochs, caption_weight, device, seed,
                      words)
    if words is not None:
        words.expand(model.text_decoder)
    save(model, config, image_size, out)


def main() -> None:
    parser = training_arguments(__doc__)
    parser.add_argument("--caption-weight", type=float, default=2.0, help="CoCaLoss caption_loss_weight")
    parser.add_argument("--init", type=Path, help="start from the weights this script saved in this folder")
    parser.add_argument("--swap-weight", type=float, default=0.0,
                        help="from halfway, also rank each caption above a word-swapped variant (0: off)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's choice; 1 is ~10x faster on a CPU another job shares)")
    parser.add_argument("--position-weight", type=float, default=0.0,
                        help="keep a loud position code in each image token before the pooler (0: off)")
    parser.add_argument("--decoder-epochs", type=int, default=0,
                        help="then train a fresh pooler and decoder this many epochs on the frozen towers (0: off)")
    parser.add_argument("--vocabulary", choices=("full", "captions"), default="captions",
                        help="the decoder's output words: all 49,408, or the training captions' (the rest held at "
                             "zero; CaptionVocabulary)")
    parser.add_argument("--image-tokens", type=int, default=32,
                        help="the pooler's outputs that the decoder reads (one more query makes the contrastive "
                             "embedding)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args.pairs, args.out, args.epochs, args.batch_size, args.lr, args.seed, args.image_size,
          args.family_batches, args.device, args.patch_size, args.context_length, args.caption_weight, args.init,
          args.swap_weight, args.position_weight, args.decoder_epochs, args.vocabulary, args.image_tokens)


if __name__ == "__main__":
    main()
