"""CoCa models: which have a text decoder for stage 2, and which must not serve stage 1.

A CoCa model (open_clip's ``CoCa``) is a dual encoder with a multimodal text decoder on
top: its contrastive embeddings serve stage 1, its decoder scores stage 2 with no
training by the user (:mod:`vtsearch.query.decoder`).

The ``mscoco_finetuned_*`` weights were fine-tuned for captioning alone: their decoder
captions well but their contrastive head no longer embeds (COCO retrieval R@1 well
under 1 %, as measured for the issue that added CoCa). An index is a stage-1 search
first, so those weights are refused.
"""

from __future__ import annotations

import torch

from ..config import HF_HUB_PREFIX, EncoderSpec

__all__ = ["broken_contrastive_head", "has_text_decoder"]

CAPTION_ONLY_TAG = "mscoco_finetuned"  # open_clip's tags and the Hub repositories share it


def has_text_decoder(model: torch.nn.Module) -> bool:
    """True for a CoCa model: a text decoder that cross-attends to an attentional pooler."""
    return (hasattr(model, "text_decoder") and hasattr(model.text_decoder, "cross_attn")
            and getattr(model.visual, "attn_pool", None) is not None)


def broken_contrastive_head(spec: EncoderSpec) -> str | None:
    """Why ``spec``'s weights cannot serve stage 1, or None when they can: CoCa weights
    fine-tuned for captioning only (``mscoco_finetuned_*``), named by tag or Hub repository."""
    names = [spec.pretrained.lower()]
    if spec.model.startswith(HF_HUB_PREFIX):
        names.append(spec.model[len(HF_HUB_PREFIX):].split("/")[-1].lower())
    if any(name.startswith(CAPTION_ONLY_TAG) for name in names):
        return (f"{spec.describe()} was fine-tuned for captioning only: its contrastive embeddings, which a "
                f"search ranks by, no longer match texts to images (COCO R@1 under 1 %); use CoCa's "
                f"laion2b_s13b_b90k weights")
    return None
