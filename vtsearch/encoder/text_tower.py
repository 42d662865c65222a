"""open_clip text-tower internals: token states and word embeddings in the joint space.

open_clip lays its text tower out three ways. ``CLIP`` keeps the tower's parts on the
model itself (``token_embedding``, ``transformer``, ``ln_final``, ``text_projection``);
``CustomTextCLIP`` (and ``CoCa``) keep them under ``model.text``, either open_clip's own
``TextTransformer`` or a Hugging Face tower (``model.text.transformer``, projected by
``model.text.proj``). Towers differ in context length (77, 64 for SigLIP, 32 for PE-Core),
padding id (0, or 1 for XLM-R) and pooling (end-of-text, last position, mean). Only this
module knows those layouts; :class:`~vtsearch.encoder.Encoder` asks it for states and widths.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from open_clip.transformer import text_global_pool

__all__ = ["States", "causal_states", "embed_dim", "enable_text_tokens", "text_states", "word_embedding", "word_states",
           "word_width"]


class States(NamedTuple):
    """One run of a text tower over (B, T) token ids."""

    pooled: torch.Tensor  # (B, D) the pooled vector in the joint space (not normalised)
    states: torch.Tensor  # (B, T, D) each token's state in the joint space
    lengths: torch.Tensor  # (B,) tokens through the last real one
    words: torch.Tensor  # (B, T, width) input embeddings (token + position); width 0 if unknown
    hidden: torch.Tensor | None = None  # (B, T, width) states before the final norm, where a
    # multimodal decoder reads them (CoCa's tower); None for other towers


def embed_dim(model: torch.nn.Module) -> int:
    """Width of the joint space both towers project into, read from the model's layers."""
    text = getattr(model, "text", None)
    for tower in (model, text):
        projection = getattr(tower, "text_projection", None)
        if isinstance(projection, torch.Tensor):
            return int(projection.shape[-1])
        if isinstance(projection, torch.nn.Linear):
            return int(projection.out_features)
    if text is not None and hasattr(text, "ln_final"):  # a TextTransformer without a projection
        return int(text.width)
    for tower in (text, model.visual):
        if getattr(tower, "output_dim", None):  # a Hugging Face tower; open_clip's ViT
            return int(tower.output_dim)
    context = int(getattr(text, "context_length", None) or getattr(model, "context_length", 77))
    with torch.inference_mode():
        return int(model.encode_text(torch.zeros(1, context, dtype=torch.long)).shape[-1])


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


def text_states(model: torch.nn.Module, tokens: torch.Tensor, pad_id: int = 0) -> States:
    """The tower's pooled vector and token states in the joint space, the lengths, its
    input embeddings of those tokens (see :func:`word_states`) and, for CoCa's tower, its
    states before the final norm (what CoCa's decoder reads): :class:`States`.

    ``lengths`` count the tokens through the last one that is not ``pad_id`` (the
    tokenizer's padding), or through the end-of-text token that a causal tower pools.
    A causal tower pooled at its end-of-text token (``CLIP``, EVA, PE-Core) runs only up to
    the longest end-of-text position: with a causal mask the states there do not depend
    on the padding after them, so this is exact and 2.4× faster than running all 77
    positions (ViT-B-32, one short query, 2-core CPU).
    """
    causal = _causal_tower(model)
    if causal is not None:
        return _causal_states(model, causal, tokens)
    if hasattr(model, "token_embedding"):
        return _clip_states(model, tokens, pad_id)
    if hasattr(model.text, "pooler"):
        return _hf_states(model, tokens)
    return _text_transformer_states(model, tokens, pad_id)


def causal_states(model: torch.nn.Module) -> bool:
    """True when a token's contextual state saw no later token (a causal mask), so a
    scorer predicting the next word from it cannot peek."""
    tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    return getattr(tower, "attn_mask", None) is not None


def _causal_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The causal text tower pooled at its end-of-text token (the highest id): ``model``
    itself for ``CLIP``, ``model.text`` for a ``TextTransformer``; None for any other."""
    text = getattr(model, "text", None)
    for tower, pool in ((model, getattr(model, "text_pool_type", "")), (text, getattr(text, "pool_type", ""))):
        if (tower is not None and hasattr(tower, "token_embedding") and pool == "argmax"
                and getattr(tower, "attn_mask", None) is not None and getattr(tower, "cls_emb", None) is None):
            return tower
    return None


def _causal_states(model: torch.nn.Module, tower: torch.nn.Module, tokens: torch.Tensor) -> States:
    """:func:`text_states` for a causal tower, run only through the last end-of-text token."""
    eot = tokens.argmax(dim=-1)  # (B,) the end-of-text token has the highest id
    length = int(eot.max()) + 1
    cast_dtype = tower.transformer.get_cast_dtype()
    words = word_states(model, tokens[:, :length])  # (B, T, width): token + position
    x = tower.transformer(words.to(cast_dtype), attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)  # (B, T, width)
    states = _project(x, tower.text_projection)  # (B, T, D)
    pooled = states[torch.arange(len(tokens), device=tokens.device), eot]  # (B, D)
    return States(pooled, states, eot + 1, words)


def _clip_states(model: torch.nn.Module, tokens: torch.Tensor, pad_id: int) -> States:
    """:func:`text_states` for a ``CLIP`` pooled otherwise (at a tokenizer's end-of-sequence
    id, or at the last position): all positions, as ``CLIP.encode_text`` runs them."""
    words = word_states(model, tokens)  # (B, T, width)
    x = model.transformer(words.to(model.transformer.get_cast_dtype()), attn_mask=model.attn_mask)
    x = model.ln_final(x)  # (B, T, width)
    pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return States(_project(pooled, model.text_projection), _project(x, model.text_projection),
                  _lengths(tokens != pad_id), words)


def _text_transformer_states(model: torch.nn.Module, tokens: torch.Tensor, pad_id: int) -> States:
    """:func:`text_states` for open_clip's ``TextTransformer`` under ``model.text``
    (bidirectional ones: SigLIP, MobileCLIP2; CoCa's)."""
    text = model.text  # enable_text_tokens set text.output_tokens
    pooled, states = text(tokens)  # (B, D), (B, ctx, width)
    hidden = None
    if getattr(text, "cls_emb", None) is not None:
        hidden = states  # CoCa returns its token states before the final norm: its decoder reads them
        states = text.ln_final(states)
    projected = _project(states, text.text_projection)  # (B, ctx, D)
    return States(pooled, projected, _lengths(tokens != pad_id), word_states(model, tokens[:, : states.shape[1]]),
                  hidden)


def _hf_states(model: torch.nn.Module, tokens: torch.Tensor) -> States:
    """:func:`text_states` for a Hugging Face tower (XLM-R, RoBERTa, mT5, NLLB): its own
    padding mask, the pooled vector as ``HFTextEncoder`` makes it, and every token's last
    hidden state through the same projection (``proj``). Padding is masked out of the
    attention, so the tower runs only through the longest text: exact, and cheaper."""
    text = model.text
    tokens = tokens[:, : int(_lengths(tokens != text.config.pad_token_id).max())]  # (B, T)
    mask = (tokens != text.config.pad_token_id).long()  # (B, T) 1 at real tokens
    output = text.transformer(input_ids=tokens, attention_mask=mask)
    pooled = text.proj(text.pooler(output, mask))  # (B, D)
    states = text.proj(output.last_hidden_state)  # (B, T, D)
    return States(pooled, states, _lengths(mask.bool()), word_states(model, tokens))


def _lengths(real: torch.Tensor) -> torch.Tensor:
    """(B, T) true at real tokens → (B,) tokens through the last real one (at least 1)."""
    positions = torch.arange(1, real.shape[1] + 1, device=real.device)  # (T,)
    return (real.long() * positions).amax(dim=-1).clamp(min=1)


def _project(states: torch.Tensor, projection: Any) -> torch.Tensor:
    """Tower-width states → the joint space; a tower may project with a matrix, a
    ``Linear`` or not at all."""
    if projection is None:
        return states
    if isinstance(projection, torch.nn.Linear):
        return projection(states)
    return states @ projection
