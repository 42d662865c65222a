"""Tiny random models of each open_clip tower kind, written in open_clip's local-dir layout.

open_clip's timm towers name a registered timm model, so the tiny timm trunks (same
classes as EVA02, MobileCLIP's FastViT, SigLIP's MAP-pooled ViT and PE-Core, at a few
thousand parameters) are registered here under ``vtsearch_test_*`` names. Tokenizers that
open_clip takes from Hugging Face (SigLIP's, XLM-R's) are built from a word list with
``tokenizers`` and saved into the model folder, where open_clip looks for them.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from timm.models import register_model
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from timm.models.vision_transformer import VisionTransformer

EMBED = 24  # joint space, narrower than the towers (32) so that projections show
WIDTH = 32
WORDS = "a photo of dog on beach red green blue square circle left right one thing".split()


def _head_kwargs(kwargs: dict) -> dict:
    """What open_clip's TimmModel asks of a trunk (timm adds its pretrained_cfg etc.)."""
    return {key: value for key, value in kwargs.items() if key in ("num_classes", "global_pool")}


@register_model
def vtsearch_test_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A ViT pooled by its class token (MobileCLIP-B's kind)."""
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2, mlp_ratio=2,
                             **_head_kwargs(kwargs))


@register_model
def vtsearch_test_eva(pretrained: bool = False, **kwargs) -> Eva:
    """An EVA02-style trunk: rotary positions, SwiGLU, pooled by its class token."""
    return Eva(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2, mlp_ratio=2, qkv_fused=False,
               swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4), **_head_kwargs(kwargs))


@register_model
def vtsearch_test_fastvit(pretrained: bool = False, **kwargs) -> FastVit:
    """A FastViT (MobileCLIP2's image tower): RepMixer then attention, MobileOne blocks."""
    return FastVit(layers=(1, 1), embed_dims=(16, 32), mlp_ratios=(2, 2), downsamples=(False, True),
                   se_downsamples=(False, True), token_mixers=("repmixer", "attention"),
                   pos_embs=(None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))), lkc_use_act=True,
                   **_head_kwargs(kwargs))


@register_model
def vtsearch_test_convnext(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """A ConvNeXt: its head norms the pooled map, and open_clip adds a linear projection."""
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, WIDTH), **_head_kwargs(kwargs))
    model.default_cfg = model.pretrained_cfg = {}  # TimmModel reads it when it adds its own projection
    return model


@register_model
def vtsearch_test_siglip(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """SigLIP's image tower: no class token, pooled by a MAP attention head."""
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2, mlp_ratio=2,
                             class_token=False, **_head_kwargs(kwargs))


@register_model
def vtsearch_test_pe(pretrained: bool = False, **kwargs) -> Eva:
    """PE-Core's image tower: an EVA trunk with a class token, MAP-pooled, then a projection."""
    return Eva(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2, mlp_ratio=2, attn_type="rope",
               use_rot_pos_emb=True, use_pre_transformer_norm=True, ref_feat_shape=(4, 4), attn_pool_num_heads=2,
               attn_pool_mlp_ratio=2, **_head_kwargs(kwargs))


def _timm_vision(name: str, pool: str, proj: str | None, image_size: int = 32) -> dict:
    return {"image_size": image_size, "timm_model_name": name, "timm_model_pretrained": False,
            "timm_pool": pool, "timm_proj": proj}


CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 1}

CONFIGS = {
    "clip_vit": {"embed_dim": EMBED, "vision_cfg": {"image_size": 32, "layers": 1, "width": WIDTH,
                                                   "head_width": 16, "patch_size": 8}, "text_cfg": CLIP_TEXT},
    "clip_eos": {"embed_dim": EMBED, "vision_cfg": {"image_size": 32, "layers": 1, "width": WIDTH,
                                                   "head_width": 16, "patch_size": 8},
                 "text_cfg": {**CLIP_TEXT, "pool_type": "eos", "eos_id": 49407}},  # MetaCLIP 2's pooling
    "coca": {
        "embed_dim": EMBED, "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": WIDTH, "head_width": 16, "patch_size": 8,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {**CLIP_TEXT, "context_length": 76, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {**CLIP_TEXT, "context_length": 76, "attn_pooler_heads": 2},
    },
    "timm_vit": {"embed_dim": EMBED, "custom_text": True, "text_cfg": CLIP_TEXT,
                 "vision_cfg": _timm_vision("vtsearch_test_vit", "token", None)},
    "timm_eva": {"embed_dim": EMBED, "custom_text": True, "text_cfg": CLIP_TEXT,
                 "vision_cfg": _timm_vision("vtsearch_test_eva", "token", None)},
    "timm_fastvit": {"embed_dim": EMBED, "custom_text": True, "text_cfg": {**CLIP_TEXT, "no_causal_mask": True},
                     "vision_cfg": _timm_vision("vtsearch_test_fastvit", "avg", None, image_size=64)},
    "timm_convnext": {"embed_dim": EMBED, "custom_text": True, "text_cfg": CLIP_TEXT,
                      "vision_cfg": _timm_vision("vtsearch_test_convnext", "", "linear", image_size=128)},
    "timm_pe": {"embed_dim": EMBED, "custom_text": True, "text_cfg": {**CLIP_TEXT, "context_length": 32},
                "vision_cfg": _timm_vision("vtsearch_test_pe", "map", None)},
    "timm_siglip": {  # needs transformers: its tokenizer is a Hugging Face one
        "embed_dim": WIDTH, "custom_text": True, "vision_cfg": _timm_vision("vtsearch_test_siglip", "map", "none"),
        "text_cfg": {"context_length": 16, "vocab_size": 64, "hf_tokenizer_name": "local", "width": WIDTH, "heads": 2,
                     "layers": 1, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                     "tokenizer_kwargs": {"clean": "canonicalize"}},
    },
    "hf_text": {  # needs transformers: an XLM-R text tower and tokenizer
        "embed_dim": EMBED, "vision_cfg": {"image_size": 32, "layers": 1, "width": WIDTH, "head_width": 16,
                                           "patch_size": 8},
        "text_cfg": {"hf_model_name": "HF_DIR", "hf_tokenizer_name": "local", "hf_pooler_type": "mean_pooler",
                     "context_length": 16},
    },
}
NEEDS_TRANSFORMERS = ("timm_siglip", "hf_text")


def write_tower(kind: str, folder: Path, seed: int = 0) -> Path:
    """A random model of ``kind`` (a key of :data:`CONFIGS`) in local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(CONFIGS[kind]))
    if kind == "hf_text":
        config["text_cfg"]["hf_model_name"] = str(_write_xlm_roberta(folder / "xlm-roberta"))
        _write_tokenizer(folder, specials=("<s>", "<pad>", "</s>", "<unk>"), template="<s> $A </s>")
    if kind == "timm_siglip":
        _write_tokenizer(folder, specials=("<pad>", "</s>", "<s>", "<unk>"), template="$A </s>")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)  # no weights yet: random
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _write_xlm_roberta(folder: Path) -> Path:
    from transformers import XLMRobertaConfig

    XLMRobertaConfig(vocab_size=len(WORDS) + 4, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2).save_pretrained(folder)
    return folder


def _write_tokenizer(folder: Path, specials: tuple[str, ...], template: str) -> None:
    """A word-level tokenizer over :data:`WORDS` with ``specials`` first (their ids by
    position: XLM-R pads with 1, SigLIP2's Gemma tokenizer with 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: number for number, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [token for token in ("<s>", "</s>") if token in template]
    tokenizer.post_processor = processors.TemplateProcessing(single=template,
                                                             special_tokens=[(t, vocab[t]) for t in used])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
