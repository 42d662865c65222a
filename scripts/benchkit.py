"""What the benchmark scripts share: an open_clip model with random weights.

Random weights cost exactly what pretrained ones do, and need no download.
"""

from __future__ import annotations

import open_clip
import torch

from vtsearch.config import EncoderSpec
from vtsearch.encode import Encoder


def random_encoder(model: str, device: torch.device) -> Encoder:
    """``model`` (an open_clip name) with seeded random weights, as a vtsearch encoder."""
    torch.manual_seed(0)
    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    return Encoder(EncoderSpec(model, "random-init"), network, preprocess, open_clip.get_tokenizer(model), device)
