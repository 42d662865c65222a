#!/usr/bin/env python3
"""What each open_clip family costs on this machine, through vtsearch's encoder: the
numbers behind README's "Choosing a model".

For each model, with random weights (the cost is that of the pretrained model; nothing
is downloaded) and in each precision (fp32, bf16):

- ``images_per_s``: ``Encoder.encode_image_features`` with regions, one batch of
  ``--batch-size`` on pre-made pixels (decode excluded: ``bench_ingest.py`` has it),
  the best of ``--repeats`` batches;
- ``query_ms``: one text query's ``encode_text_features`` (vector and stage-2 token
  states) on a 7-token text padded as the tokenizer pads, the best of ``--queries``.

Best-of timings: on a shared machine the fastest run is the one least disturbed.
- ``params_m`` and ``download_mb`` (float32 weights, as open_clip's hub files hold them),
  the region layout and the stage-2 text width: what stage 2 gets.

Tokenizers that live on the Hugging Face hub are replaced by a stand-in producing the
same ids layout; the Hugging Face text tower (XLM-R) is built from its published config.

    python scripts/bench_models.py [--models ViT-B-32 ViT-B-32-SigLIP2-256 ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from vtsearch.config import EncoderSpec
from vtsearch.encoder import Encoder
from vtsearch.encoder.precision import cpu_has_bf16
from vtsearch.encoder.weights import reparameterize

MODELS = ["ViT-B-32", "ViT-B-32-256", "ViT-B-16", "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2-256", "EVA02-B-16",
          "PE-Core-B-16", "MobileCLIP2-S0", "MobileCLIP2-S2", "xlm-roberta-base-ViT-B-32", "coca_ViT-B-32"]
XLM_R_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2)


class StandInTokenizer:
    """Ids laid out as the model's own tokenizer lays them out: start, words, end, padding."""

    def __init__(self, context_length: int, start: int, end: int, pad: int):
        self.context_length, self.start, self.end, self.pad = context_length, start, end, pad

    def __call__(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        length = context_length or self.context_length
        rows = torch.full((len(texts), length), self.pad, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start, *[1000 + (hash(word) % 5000) for word in text.split()][: length - 2], self.end]
            rows[row, : len(ids)] = torch.tensor(ids)
        return rows


def build(name: str, workdir: Path) -> tuple[torch.nn.Module, object]:
    """A randomly initialised ``name`` and a tokenizer for it (no download)."""
    config = open_clip.get_model_config(name)
    torch.manual_seed(0)
    if "hf_model_name" in config["text_cfg"]:
        from transformers import XLMRobertaConfig

        folder = workdir / "xlm-roberta-base"
        XLMRobertaConfig(**XLM_R_BASE).save_pretrained(folder)
        config["text_cfg"] = {**config["text_cfg"], "hf_model_name": str(folder), "hf_model_pretrained": False}
        model = open_clip.CustomTextCLIP(**config)
        return model, StandInTokenizer(77, 0, 2, 1)
    model = open_clip.create_model(name, pretrained=None)
    context = config["text_cfg"].get("context_length", 77)
    if config["text_cfg"].get("hf_tokenizer_name"):  # SigLIP's: no start token, end 1, padding 0
        return model, StandInTokenizer(context, 2, 1, 0)
    return model, open_clip.get_tokenizer(name)


def best_time(run, times: int) -> float:
    """The fastest of ``times`` runs, in seconds."""
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure(name: str, precision: str, batch_size: int, repeats: int, queries: int, workdir: Path) -> dict:
    model, tokenizer = build(name, workdir)
    reparameterize(model)
    params = sum(p.numel() for p in model.parameters())
    encoder = Encoder(EncoderSpec(name, "random-init"), model, lambda image: image, tokenizer,
                      torch.device("cpu"), precision)
    layout = encoder.region_layout()
    pixels = torch.randn(batch_size, 3, encoder.image_size, encoder.image_size)
    encoder.encode_image_features(pixels[:2], layout)  # warm up
    images_per_s = batch_size / best_time(lambda: encoder.encode_image_features(pixels, layout), repeats)
    encoder.encode_text_features(["a dog on a beach"])  # warm up
    query_s = best_time(lambda: encoder.encode_text_features(["a dog on a beach"]), queries)
    return {
        "model": name, "precision": encoder.precision, "params_m": round(params / 1e6, 1),
        "download_mb": round(params * 4 / 2**20), "image_size": encoder.image_size,
        "images_per_s": round(images_per_s, 2), "query_ms": round(1000 * query_s, 1),
        "regions": f"{layout.prefix}+{layout.grid}x{layout.grid}x{layout.dim}" if layout else f"none: {encoder.regions_unavailable}",
        "text_token_dim": encoder.text_token_dim, "context_length": encoder.context_length,
        "bf16_agreement": encoder.bf16_agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's own]")
    parser.add_argument("--json", action="store_true", help="one JSON line per model and precision")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vtsearch-bench-models-") as temp:
        for name in args.models:
            for precision in args.precisions:
                row = measure(name, precision, args.batch_size, args.repeats, args.queries, Path(temp))
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{row['model']:>26} {row['precision']:>5} {row['params_m']:>7.1f}M "
                          f"{row['download_mb']:>6} MB {row['images_per_s']:>7.2f} img/s {row['query_ms']:>7.1f} ms/query  {row['regions']}",
                          flush=True)


if __name__ == "__main__":
    main()
