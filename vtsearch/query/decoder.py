"""Stage 2 without training: CoCa's own text decoder scores (text, image) pairs.

CoCa (open_clip's ``CoCa``) is a dual encoder *and* a captioner. Its multimodal text
decoder reads a caption's token states from the unimodal text tower and, in every layer,
cross-attends from them to the image's tokens, to predict each next token. How likely a
query is as a caption of a candidate image is then a cross-attention score that is
pretrained: a CoCa index reranks without ``train-reranker``.

    stored regions (K, 1 + h*w, width) ─ attn_pool, ln_post ─▶ image tokens (K, N, D)
    query ids (T,) ─ text tower ─▶ token states (1, T, W) ─ shared by the K candidates ─┐
        text_decoder: L × [causal self-attention, cross-attention → image tokens, MLP] ─┘
        ─▶ next-token logits (K, T-1, V) ─▶ score = Σ_t log p(id_t+1 | ids_≤t, image)

**Search** (one text, K images): the score as it is; the text's own prior is the same
for every candidate, so it changes nothing. **Match** (K texts, one image): the texts
differ, and short, common texts are likely under any image. ``prior`` says how:
``length`` (default) divides each text's log-likelihood by the tokens scored and
multiplies it by ``length_tokens`` (4: each text scored as a text of 4 tokens at its own
mean per token); ``null-image`` subtracts its log-likelihood under a blank image (the
preprocessing's mean colour), making the score a pointwise mutual information; ``none``
keeps the raw likelihood. On both shapes sets the mean per token ranked texts better
(image→text R@1 on the varied twins 0.377 against 0.227, demo twins 0.812 against 0.782;
README): a blank image's likelihood of a text is itself a noisy estimate. The mean alone
(``length_tokens`` 1, what indexes made before it record) weighed the decoder too
lightly against stage 1: on the varied twins 0.448 against 0.522 at 4 (chosen there;
demo twins 0.767 against 0.877).

**Fusion** with stage 1 (``fusion``): ``logit`` (default) adds the two as the log-scores
they are: CoCa's contrastive logit ``logit_scale · cosine`` (the model's own temperature,
~100 when trained) and the caption log-likelihood, a product of the two experts; the
final score is put back on stage 1's scale,

    final = stage1 + weight · score / logit_scale,

so it reads like a cosine and one pair's score means the same in any shortlist (``explain``
scores one pair at a time). ``standardised`` instead puts both on the shortlist's own
scale, ``final = stage1 + weight · σ(stage1) · z(score)``: scale-free, but relative to the
shortlist. With ``weight = 0`` either *is* stage 1.

open_clip 3.3.0 shifts logits inside ``CoCa.forward`` (its development branch does not),
so the pieces are called directly: the image tower's pooler on the stored tokens, the
text tower's states on the query's real tokens (as stage 1's run left them, or the tower
run on the real tokens, not 76 padded ones: the causal masks make padding invisible, so
the scores are the same, in fp32 exactly; under a GPU's fp16 autocast stage 1's states
carry its rounding), and ``text_decoder``'s blocks, whose last states
meet its output layer here: each scored token's logit, and the normaliser over the
vocabulary's non-zero columns (``_OutputLayer``; a CoCa trained with its output words kept
to its captions' normalises over a few dozen, exactly as it was trained). The pooler's and
the blocks' attention are computed from their weights (see :meth:`CocaDecoder.decoder_states`);
where it costs fewer products, a search's cross-attention takes the query's few rows into
the image tokens' space instead of projecting every candidate's tokens into keys and values
(:func:`_attend_unprojected`: ViT-B-32's 255 tokens against ~11 text tokens, a fifth of
the products; its rerank 1.5-1.9x faster in float32 on 2 cores, ~1.15x in bfloat16).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import numpy as np
import torch

from .rerank import RerankOutput

__all__ = ["CocaDecoder", "DecoderConfig", "DecoderReranker", "PRIORS", "SCORER"]

SCORER = "coca-decoder"  # how the manifest names this scorer
PRIORS = ("null-image", "length", "none")
FUSIONS = ("logit", "standardised")


@dataclass(frozen=True)
class DecoderConfig:
    """How a CoCa index reranks; the manifest keeps it (``RerankerSummary.config``)."""

    weight: float = 1.0  # the decoder's score against stage 1's
    fusion: str = "logit"  # how the two are added (see the module docstring)
    prior: str = "length"  # match: how each text's own prior is taken out (see the module docstring)
    length_tokens: float = 4.0  # match, prior "length": the tokens each text is scored as (× its mean per token)
    shortlist_cpu: int = 20  # default recall_k on a CPU (ViT-B-32: 7-18 ms per candidate on 2 cores, bf16-fp32)
    shortlist_gpu: int = 100  # ... and on a GPU
    batch: int = 32  # candidates per decoder call (bounds the (batch, T, vocab) logits)

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, not {self.prior!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecoderConfig":
        """The manifest's settings; one made before ``length_tokens`` scored the mean per
        token as it is (1), and keeps doing so."""
        known = {f.name for f in fields(cls)}
        return cls(**{"length_tokens": 1.0, **{k: v for k, v in data.items() if k in known}})


class CocaDecoder:
    """The parts of a CoCa model that score: the image tower's attentional pooler (over
    the stored pre-pooler tokens), the text tower and the multimodal text decoder."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        model.text.output_tokens = True  # set once (calls may come from several threads)
        self._null: torch.Tensor | None = None
        self.output = _OutputLayer(model.text_decoder)

    @property
    def device(self) -> torch.device:
        return next(self.model.text_decoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.text_decoder.parameters()).dtype

    def image_tokens(self, regions: torch.Tensor) -> torch.Tensor:
        """Stored (K, 1 + h*w, width) tokens → the decoder's (K, N, D) image tokens: the
        attentional pooler, its final norm and the split off of the contrastive token
        (open_clip's ``VisionTransformer._pool``), the pooler's attention computed as the
        decoder's is (:func:`_attend`; its queries projected once for all K)."""
        visual, regions = self.model.visual, regions.to(self.device, self.dtype)
        pooler = visual.attn_pool
        if getattr(visual, "attn_pool_contrastive", None) is not None or not _computable([pooler], [pooler.attn]):
            return visual._pool(regions)[1]  # (K, N, D)
        queries = pooler.ln_q(pooler.query)[None]  # (1, N + 1, D): the same for every image
        pooled = _attend(pooler.attn, queries, pooler.ln_k(regions))  # (K, N + 1, D)
        return visual._global_pool(visual.ln_post(pooled))[1]

    def null_image(self) -> torch.Tensor:
        """(1, N, D) the image tokens of a blank image (all-zero normalised pixels)."""
        if self._null is None:
            visual = self.model.visual
            height, width = visual.image_size
            pixels = torch.zeros(1, 3, height, width, device=self.device, dtype=self.dtype)
            self._null = self.image_tokens(visual.transformer(visual._embeds(pixels)))
        return self._null

    def text_states(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids → (B, T, W) the text tower's token states (before its final
        norm, as CoCa's decoder reads them)."""
        _, states = self.model.text(ids.to(self.device))
        return states

    def log_likelihood(self, image: torch.Tensor, states: torch.Tensor, ids: torch.Tensor,
                       lengths: torch.Tensor, read_last: bool = False) -> torch.Tensor:
        """(B,) Σ log p(token t+1 | tokens ≤ t, image) over each text's real tokens, for
        (B, N, D) image tokens and (B, T, W) token states, either of them 1 row for all B
        (padding after a text's end is never read: both masks are causal). The last token
        predicts nothing, so it is not read unless ``read_last`` (to see where it looks)."""
        return self.token_log_probs(image, states, ids, lengths, read_last).sum(dim=1)

    def token_log_probs(self, image: torch.Tensor, states: torch.Tensor, ids: torch.Tensor,
                        lengths: torch.Tensor, read_last: bool = False) -> torch.Tensor:
        """(B, T-1) log p(token t+1 | tokens ≤ t, image) of each text's tokens after the
        first, 0 past a text's end: the terms :meth:`log_likelihood` adds up."""
        read = states if read_last else states[:, :-1]  # (B, T-1, W)
        hidden = self.decoder_states(image, read)[:, :ids.shape[1] - 1]  # (B, T-1, width)
        following = ids[:, 1:].to(hidden.device)  # (B, T-1) what each position predicts
        picked = self.output.logits_of(hidden, following) - self.output.log_normalisers(hidden)  # (B, T-1)
        positions = torch.arange(1, ids.shape[1], device=hidden.device)  # (T-1,)
        real = positions[None, :] < lengths.to(hidden.device)[:, None]  # (B, T-1)
        return picked * real

    def decoder_states(self, image: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """(B, T, width) the decoder's last states, after its final norm: what
        ``text_decoder(image, states)`` multiplies by its output layer (open_clip's
        ``MultimodalTransformer.forward`` up to that product, which :class:`_OutputLayer`
        takes over), for (B, N, D) image tokens and (B, T, W) token states.

        One text for B images (a search) is passed as 1 row: the first block's causal
        self-attention reads no image, so it runs once and its output is shared (a sixth
        of the demo CoCa's 3-layer blocks per candidate; 1/24 of ViT-B-32's 12 layers). One
        image for B texts may be 1 row too.

        The blocks' attention is computed here from their weights (:func:`_attend`: the
        same products, without ``nn.MultiheadAttention``'s per-call overhead, which is most
        of a small decoder's time on a CPU) where it can be (:func:`_computable`; not while
        :func:`_attention_probe` hooks the modules)."""
        decoder = self.model.text_decoder
        length, batch = states.shape[1], max(len(states), len(image))
        blocks = [*decoder.resblocks, *decoder.cross_attn]
        if decoder.batch_first and _computable(blocks, [block.attn for block in blocks]):
            text = states  # 1 row until the first cross-attention broadcasts it to B
            for block, cross in zip(decoder.resblocks, decoder.cross_attn):
                text = text + block.ls_1(_attend(block.attn, block.ln_1(text)))
                text = text + block.ls_2(block.mlp(block.ln_2(text)))
                text = text + cross.ls_1(_attend(cross.attn, cross.ln_1(text), cross.ln_1_kv(image)))
                text = text + cross.ls_2(cross.mlp(cross.ln_2(text)))
            return decoder.ln_final(text)
        image = image.expand(batch, -1, -1)
        text, image = (states, image) if decoder.batch_first else (states.permute(1, 0, 2), image.permute(1, 0, 2))
        batch_dim = 0 if decoder.batch_first else 1
        for block, cross in zip(decoder.resblocks, decoder.cross_attn):
            text = block(text, attn_mask=decoder.attn_mask[:length, :length])
            text = text.expand(*[batch if dim == batch_dim else -1 for dim in range(3)])  # after the first: as is
            text = cross(text, k_x=image, v_x=image)
        text = text if decoder.batch_first else text.permute(1, 0, 2)
        return decoder.ln_final(text)


def _computable(modules: list[torch.nn.Module], attentions: list[torch.nn.MultiheadAttention]) -> bool:
    """True when :func:`_attend` computes what these (batch-first) attention modules
    would: no extra key or value, no dropout in play, and no hooks, on them or on the
    ``modules`` around them, that wait for them to run."""
    plain = all(attention.batch_first and attention.bias_k is None and not attention.add_zero_attn
                and not (attention.training and attention.dropout) for attention in attentions)
    return plain and not any(module._forward_hooks or module._forward_pre_hooks for module in (*modules, *attentions))


def _projections(attention: torch.nn.MultiheadAttention, x: torch.Tensor,
                 context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries of ``x`` and the keys and values of ``context`` (``x`` itself for
    self-attention: one packed product), by ``attention``'s input projections."""
    width, linear = attention.embed_dim, torch.nn.functional.linear
    (w_q, w_k, w_v), (b_q, b_k, b_v) = _input_weights(attention)
    if not attention._qkv_same_embed_dim:  # keys and values of another width: three matrices
        return linear(x, w_q, b_q), linear(context, w_k, b_k), linear(context, w_v, b_v)
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if x is context:
        return linear(x, weight, bias).chunk(3, dim=-1)
    keys_values = linear(context, weight[width:], None if bias is None else bias[width:]).chunk(2, dim=-1)
    return (linear(x, w_q, b_q), *keys_values)


def _input_weights(attention: torch.nn.MultiheadAttention) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]:
    """``attention``'s input projections, (W_q, W_k, W_v) and their biases (b_q, b_k, b_v),
    None without biases: views of the packed matrix, or its three separate ones."""
    width, bias = attention.embed_dim, attention.in_proj_bias
    biases = (None, None, None) if bias is None else tuple(bias.split(width))
    if attention._qkv_same_embed_dim:
        return tuple(attention.in_proj_weight.split(width)), biases
    return (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight), biases


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, W) → (B, heads, L, W / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attend(attention: torch.nn.MultiheadAttention, x: torch.Tensor,
            context: torch.Tensor | None = None) -> torch.Tensor:
    """``attention(x, context, context)`` for (B, T, W) batch-first queries and (B, N, Wc)
    keys and values, either of them 1 row for all B (projected once, then shared); without
    ``context``, ``x``'s own causal self-attention (one packed input projection). Where it
    costs fewer products, the keys and values are not projected (:func:`_attend_unprojected`)."""
    if context is not None and _unprojected_is_cheaper(attention, x, context):
        return _attend_unprojected(attention, x, context)
    q, k, v = _projections(attention, x, x if context is None else context)
    heads, batch = attention.num_heads, max(len(q), len(k))
    q, k, v = (_heads(t, heads).expand(batch, -1, -1, -1) for t in (q, k, v))
    out = _sdpa(q, k, v, is_causal=context is None)  # (B, heads, T, hd)
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options: Any) -> torch.Tensor:
    if q.device.type == "cuda":  # some GPU attention kernels have mishandled broadcast (stride-0) inputs
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, **options)


def _unprojected_is_cheaper(attention: torch.nn.MultiheadAttention, x: torch.Tensor, context: torch.Tensor) -> bool:
    """True when :func:`_attend_unprojected` takes fewer multiply-adds than projecting the
    keys and values: a few text rows against many image tokens in many rows (a search's
    shortlist: ViT-B-32's 255 tokens against ~11 text tokens and 8 heads, about a fifth;
    the demo CoCa's 32 against 4 heads, about a half), not one image shared by many texts
    (a match), whose keys and values are projected once."""
    (rows, length), (images, tokens, wc) = x.shape[:2], context.shape
    width, heads, batch = attention.embed_dim, attention.num_heads, max(rows, images)
    attend = batch * 2 * heads * length * tokens * (width // heads)  # scores and weighted sum
    projected = images * tokens * 2 * width * wc + attend
    unprojected = (rows + batch) * length * width * wc + attend * wc // (width // heads)
    return unprojected < projected


def _attend_unprojected(attention: torch.nn.MultiheadAttention, x: torch.Tensor,
                        context: torch.Tensor) -> torch.Tensor:
    """What :func:`_attend` computes for a ``context``, with the key and value projections
    moved to the queries' side (the same function, other rounding). For head h with
    projections W_k, W_v (hd × Wc) and biases b_k, b_v: q · (W_k c + b_k) = (q W_k) · c +
    q · b_k, whose second term is the same for every key and cancels in the softmax; and
    Σ_j p_j (W_v c_j + b_v) = W_v (Σ_j p_j c_j) + b_v, the weights summing to one. So each
    head's query is taken into the context's space, (T, hd) → (T, Wc), attention runs over
    the context's (N, Wc) tokens as they are, and its (T, Wc) output goes through W_v:
    2·T·hd·Wc + 2·T·N·Wc per head instead of N·2·W·Wc for the keys and values."""
    heads = attention.num_heads
    head_width = attention.embed_dim // heads
    (w_q, w_k, w_v), (b_q, _, b_v) = _input_weights(attention)
    q = torch.nn.functional.linear(x, w_q, b_q)  # (Bq, T, W)
    rows, length = q.shape[:2]
    q = q.unflatten(-1, (heads, head_width)).permute(2, 0, 1, 3).flatten(1, 2)  # (heads, Bq·T, hd)
    q = torch.bmm(q, w_k.unflatten(0, (heads, head_width)))  # (heads, Bq·T, Wc)
    q = q.unflatten(1, (rows, length)).transpose(0, 1).flatten(1, 2)  # (Bq, heads·T, Wc): all heads' queries
    batch = max(rows, len(context))
    q, tokens = q.expand(batch, -1, -1)[:, None], context.expand(batch, -1, -1)[:, None]  # as one head
    mixed = _sdpa(q, tokens, tokens, scale=head_width ** -0.5)[:, 0]  # (B, heads·T, Wc)
    mixed = mixed.unflatten(1, (heads, length)).transpose(0, 1).flatten(1, 2)  # (heads, B·T, Wc)
    out = torch.bmm(mixed, w_v.unflatten(0, (heads, head_width)).transpose(1, 2))  # (heads, B·T, hd)
    out = out.unflatten(1, (batch, length)).permute(1, 2, 0, 3).flatten(2)  # (B, T, W)
    if b_v is not None:
        out = out + b_v
    return attention.out_proj(out)


class _OutputLayer:
    """The decoder's (width, V) output projection, read for log-probabilities: each scored
    token's own logit, and the log-normaliser over all V words.

    The normaliser is most of a small decoder's cost (49,408 words). A column that is all
    zero gives the logit 0 under every state, so such columns are counted, not multiplied:
    a CoCa trained with its output words kept to its captions' (``train_coca.py
    --vocabulary captions``; the rest held at zero) normalises over a few dozen columns and
    one constant, exactly as it was trained. A public CoCa has no zero column and takes
    the whole product. The projection is read at each call (the model may move)."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        live = decoder.text_projection.detach().ne(0).any(dim=0)  # (V,)
        self.zero_columns = int((~live).sum())
        self._live = live.nonzero().squeeze(1) if self.zero_columns else None  # the other columns' ids
        self._live_columns: torch.Tensor | None = None

    @property
    def projection(self) -> torch.Tensor:
        return self.decoder.text_projection

    def live_columns(self) -> torch.Tensor:
        """(width, V - zero_columns) the projection's non-zero columns (cached while the
        model stays where it is)."""
        projection = self.projection
        if self._live is None:
            return projection
        cached = self._live_columns
        if cached is None or cached.device != projection.device or cached.dtype != projection.dtype:
            cached = self._live_columns = projection.detach()[:, self._live.to(projection.device)].contiguous()
        return cached

    def logits_of(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) fp32 logits of (B, T) token ids under (B, T, width) states."""
        columns = self.projection.t()[ids]  # (B, T, width)
        return (hidden.float() * columns.float()).sum(dim=-1)

    def log_normalisers(self, hidden: torch.Tensor, block: int = 2 * 16 * 49_408) -> torch.Tensor:
        """(B, T) log Σ_v exp(logit_v), in fp32. On a CPU in blocks of rows of about
        ``block`` logits: the logits and logsumexp's temporaries, each their size, then
        stay in the cache (2.5x faster for 20 × 15 × 49,408 logits on 2 cores than all at
        once; the same values). A few dozen live columns take all rows at once."""
        live = self.live_columns()
        rows = max(1, block // max(1, hidden.shape[1] * live.shape[1]))
        blocks = hidden.split(rows) if hidden.device.type == "cpu" else [hidden]
        sums = torch.cat([(block @ live).float().logsumexp(dim=-1) for block in blocks])
        if self.zero_columns:
            sums = torch.logaddexp(sums, torch.tensor(math.log(self.zero_columns), device=sums.device))
        return sums


class DecoderReranker:
    """Stage 2 for a CoCa index: the pretrained decoder's score fused with stage 1. It
    has the same query methods as :class:`~vtsearch.query.rerank.Reranker`."""

    scorer_name = SCORER
    is_trained = False  # pretrained: nothing the user trained

    def __init__(self, model: torch.nn.Module, config: DecoderConfig | None = None):
        self.decoder = CocaDecoder(model)
        self.config = config or DecoderConfig()
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else 100.0

    @property
    def trained(self) -> dict[str, Any]:
        return {}

    @property
    def changes_order(self) -> bool:
        return self.config.weight != 0.0

    @property
    def default_shortlist(self) -> int:
        cpu = self.decoder.device.type == "cpu"
        return self.config.shortlist_cpu if cpu else self.config.shortlist_gpu

    @torch.inference_mode()
    def rerank(self, states: torch.Tensor, ids: torch.Tensor, stage1: np.ndarray, regions: torch.Tensor,
               need_weights: bool = False, hidden: torch.Tensor | None = None) -> RerankOutput:
        """One query text, (T,) ids, against K images' (K, 1 + h*w, width) stored tokens.
        The decoder reads the text tower's (T, W) states before its final norm: ``hidden``
        as stage 1 computed them, or the tower is run here (``states``, the stage-1 tower's
        joint-space states, are not read). With ``need_weights`` the attention is one
        (K, T, h*w) map: see :class:`_AttentionProbe`."""
        if len(stage1) == 0:
            return RerankOutput.empty()
        ids = ids[None].long()  # (1, T)
        lengths = torch.tensor([ids.shape[1]])
        text = self._states(ids, hidden)  # (1, T, W): once for all K
        scores, attention = [], []
        for start in range(0, len(regions), self.config.batch):
            with _attention_probe(self.decoder.model, need_weights) as probe:
                image = self.decoder.image_tokens(regions[start:start + self.config.batch])  # (b, N, D)
                count = len(image)
                scores.append(self.decoder.log_likelihood(image, text, ids.expand(count, -1), lengths.expand(count),
                                                          read_last=need_weights))
            attention.extend(probe.patch_attention())
        return self._fused(stage1, torch.cat(scores), [torch.cat(attention)] if attention else [])

    @torch.inference_mode()
    def rerank_texts(self, states: list[torch.Tensor], ids: list[torch.Tensor], stage1: np.ndarray,
                     regions: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> RerankOutput:
        """K candidate texts, K × (T_i,) ids (and their tower states before the final norm,
        ``hidden``, when stage 1 has them), against one image's (1 + h*w, width) tokens."""
        if not ids or len(stage1) == 0:
            return RerankOutput.empty()
        image = self.decoder.image_tokens(regions[None])  # (1, N, D): once for all K
        scores = []
        for start in range(0, len(ids), self.config.batch):
            chunk = ids[start:start + self.config.batch]
            padded = torch.nn.utils.rnn.pad_sequence([row.long() for row in chunk], batch_first=True)  # (b, T)
            text = None if hidden is None else torch.nn.utils.rnn.pad_sequence(
                hidden[start:start + self.config.batch], batch_first=True)  # (b, T, W)
            scores.append(self._text_scores(image, padded, torch.tensor([len(row) for row in chunk]), text))
        return self._fused(stage1, torch.cat(scores), [])

    def _states(self, ids: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """(B, T, W) the text tower's states before its final norm for (B, T) ids: ``hidden``
        (B × T or T alone) as given, else the tower run on the ids. The tower is causal and
        its pooling token comes after the text, so a state is the same whatever padding
        followed it in stage 1's run."""
        if hidden is None:
            return self.decoder.text_states(ids)
        hidden = hidden if hidden.dim() == 3 else hidden[None]
        if hidden.shape[:2] != ids.shape:
            raise ValueError(f"token states {tuple(hidden.shape)} do not fit ids {tuple(ids.shape)}")
        return hidden.to(self.decoder.device, self.decoder.dtype)

    def _fused(self, stage1: np.ndarray, score: torch.Tensor, attention: list[torch.Tensor]) -> RerankOutput:
        match_logit = score.double().cpu().numpy()
        if self.config.fusion == "logit":
            final = fuse_logits(stage1, match_logit, self.config.weight, self.logit_scale)
        else:
            final = fuse_standardised(stage1, match_logit, self.config.weight)
        order = np.argsort(-final, kind="stable")
        return RerankOutput(order, final, match_logit.astype(np.float32), attention)

    def _text_scores(self, image: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                     hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) each of b padded texts' (b, T) score for one image: its log-likelihood
        less its prior."""
        states = self._states(ids, hidden)  # (b, T, W)
        likelihood = self.decoder.log_likelihood(image, states, ids, lengths)
        if self.config.prior == "length":
            return likelihood * self.config.length_tokens / (lengths - 1).clamp(min=1).to(likelihood)
        if self.config.prior == "null-image":
            null = self.decoder.null_image()  # (1, N, D) for all b texts
            return likelihood - self.decoder.log_likelihood(null, states, ids, lengths)
        return likelihood


def fuse_standardised(stage1: np.ndarray, score: np.ndarray, weight: float) -> np.ndarray:
    """``stage1 + weight · σ(stage1) · z(score)`` over the shortlist (see the module
    docstring); stage 1 itself where either spread is zero (one candidate)."""
    stage1 = np.asarray(stage1, dtype=np.float64)
    spread = float(np.std(score))
    if spread == 0.0 or weight == 0.0:
        return stage1.astype(np.float32)
    standard = (score - np.mean(score)) / spread
    return (stage1 + weight * float(np.std(stage1)) * standard).astype(np.float32)


def fuse_logits(stage1: np.ndarray, score: np.ndarray, weight: float, logit_scale: float) -> np.ndarray:
    """``stage1 + weight · score / logit_scale``: the contrastive logit and the caption
    log-likelihood added, on stage 1's scale."""
    return (np.asarray(stage1, dtype=np.float64) + weight * np.asarray(score) / logit_scale).astype(np.float32)


class _AttentionProbe:
    """Attention weights open_clip computes but does not return: the decoder's cross-
    attention (per layer, (b, T, N) over the image tokens) and the pooler's (b, N+1, 1 + h*w)."""

    def __init__(self) -> None:
        self.cross: list[torch.Tensor] = []
        self.pooler: list[torch.Tensor] = []

    def patch_attention(self) -> list[torch.Tensor]:
        """(b, T, h*w): where each read token looked among the image's patches, through
        the pooler (mean over the decoder's layers and heads; class token left out)."""
        if not self.cross or not self.pooler:
            return []
        cross = torch.stack(self.cross).float().mean(dim=0)  # (b, T, N)
        pooler = self.pooler[-1].float()  # (b, 256, 1 + h*w) from the last pooler call
        through = cross @ pooler[:, -cross.shape[-1]:, 1:]  # (b, T, h*w): the N output tokens are the last N
        return [through / through.sum(dim=-1, keepdim=True).clamp(min=1e-12)]


@contextlib.contextmanager
def _attention_probe(model: torch.nn.Module, wanted: bool) -> Iterator[_AttentionProbe]:
    """While open, the decoder's cross-attention and the pooler's attention record their
    weights (asked for with ``need_weights``, which open_clip leaves off)."""
    probe = _AttentionProbe()
    if not wanted:
        yield probe
        return
    handles = []
    targets = [(block.attn, probe.cross) for block in model.text_decoder.cross_attn]
    targets.append((model.visual.attn_pool.attn, probe.pooler))
    for attention, sink in targets:
        handles.append(attention.register_forward_pre_hook(_ask_for_weights, with_kwargs=True))
        handles.append(attention.register_forward_hook(lambda _m, _a, output, sink=sink: sink.append(output[1])))
    try:
        yield probe
    finally:
        for handle in handles:
            handle.remove()


def _ask_for_weights(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "need_weights": True, "average_attn_weights": True}
