"""open_clip text-tower internals: token states and word embeddings in the joint space.

open_clip lays its text tower out two ways. ``CLIP`` keeps the tower's parts on the model
itself (``token_embedding``, ``transformer``, ``ln_final``, ``text_projection``);
``CustomTextCLIP`` keeps them under ``model.text``, either open_clip's own
``TextTransformer`` or a Hugging Face tower (``model.text.transformer``). Only this module
knows those layouts; :class:`~vtsearch.encoder.Encoder` asks it for states and widths.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["embed_dim", "enable_text_tokens", "text_states", "word_embedding", "word_states", "word_width"]


def embed_dim(model: torch.nn.Module) -> int:
    """Width of the joint space both towers project into."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return projection.shape[-1]
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    visual_dim = getattr(model.visual, "output_dim", None)
    if visual_dim:
        return visual_dim
    with torch.inference_mode():
        return model.encode_text(torch.zeros(1, 77, dtype=torch.long)).shape[-1]


def enable_text_tokens(model: torch.nn.Module) -> None:
    """Make a separate text tower (``model.text``) return its token states too."""
    if hasattr(model, "text") and hasattr(model.text, "output_tokens"):
        model.text.output_tokens = True


def word_embedding(model: torch.nn.Module) -> tuple[torch.nn.Embedding, torch.Tensor | None] | None:
    """The text tower's token embedding and learned positions (None when it has none)."""
    for tower in (model, getattr(model, "text", None)):
        if isinstance(getattr(tower, "token_embedding", None), torch.nn.Embedding):
            return tower.token_embedding, getattr(tower, "positional_embedding", None)
    inner = getattr(getattr(model, "text", None), "transformer", None)  # a Hugging Face tower
    if inner is not None and hasattr(inner, "get_input_embeddings"):
        return inner.get_input_embeddings(), None  # its positions are inside; the scorer has its own
    return None


def word_width(model: torch.nn.Module) -> int:
    """Width of one word's input embedding; 0 for a tower whose embedding is not known."""
    embedding = word_embedding(model)
    return embedding[0].embedding_dim if embedding else 0


def word_states(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids → (B, T, width) input embeddings (token + position); width 0 for
    a tower whose embedding is not known."""
    embedding = word_embedding(model)
    if embedding is None:
        return torch.zeros(*tokens.shape, 0, device=tokens.device)
    table, positions = embedding
    words = table(tokens)  # (B, T, width)
    if positions is not None:
        words = words + positions[: tokens.shape[1]].to(words.dtype)
    return words


def text_states(
    model: torch.nn.Module, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled (B, D), token states (B, T, D), lengths (B,)) in the joint space, and the
    tower's input embeddings of those tokens (B, T, width): see :func:`word_states`.

    For open_clip's ``CLIP`` (a causal text tower pooled at the end-of-text token) the
    tower runs only up to the longest end-of-text position: with a causal mask the states
    there do not depend on the padding after them, so this is exact and 2.4× faster than
    running all 77 positions (ViT-B-32, one short query, 2-core CPU).
    """
    if _is_causal_clip(model):
        return _causal_clip_states(model, tokens)
    text = model.text  # enable_text_tokens set text.output_tokens
    pooled, states = text(tokens)  # (B, D), (B, ctx, width)
    states = _project(states, getattr(text, "text_projection", None))
    lengths = (tokens != 0).sum(dim=-1).clamp(min=1)  # non-padding positions
    return pooled, states, lengths, word_states(model, tokens[:, : states.shape[1]])


def _is_causal_clip(model: torch.nn.Module) -> bool:
    """A ``CLIP`` whose text tower is causal and pooled at the end-of-text token."""
    return (hasattr(model, "token_embedding") and getattr(model, "text_pool_type", "") == "argmax"
            and model.attn_mask is not None)


def _causal_clip_states(
    model: torch.nn.Module, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`text_states` for a causal ``CLIP``, run only through the last end-of-text token."""
    eot = tokens.argmax(dim=-1)  # (B,) the end-of-text token has the highest id
    length = int(eot.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    words = word_states(model, tokens[:, :length])  # (B, T, width): token + position
    x = model.transformer(words.to(cast_dtype), attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)  # (B, T, width)
    states = _project(x, model.text_projection)  # (B, T, D)
    pooled = states[torch.arange(len(tokens), device=tokens.device), eot]  # (B, D)
    return pooled, states, eot + 1, words


def _project(states: torch.Tensor, projection: Any) -> torch.Tensor:
    """Tower-width states → the joint space; a tower may project with a matrix, a
    ``Linear`` or not at all."""
    if projection is None:
        return states
    if isinstance(projection, torch.nn.Linear):
        return projection(states)
    return states @ projection
