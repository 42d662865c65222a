"""The cross-attention fusion scorer (stage 2).

A dual encoder squeezes an image into one vector and a caption into another, so "a red
cube left of a blue ball" and "a blue cube left of a red ball" land in nearly the same
place. The scorer instead lets every *word* look at every *region*: the query's text
token states (from the text tower) attend to the candidate's region features (the visual
tower's patch tokens on a grid).

    text tokens (B, T, Dt) ─ norm ─ text_in + token position ─┐
                                      ├─ L × [causal self-attn(text) → cross-attn(text → regions) → MLP]
    regions (B, P+R, Dr) ─ norm ─ region_in + position        │       (pre-norm, residual)
                         ─ N × [self-attn(regions) → MLP] ────┘
                                      ├─ caption head: each token's state predicts the next token
                                      └─ match head: ln_out(end-of-text token) ─▶ match_logit (B,)

**The caption score** (``score="caption"``, what ``train-reranker`` trains): the scorer
is a small captioner. Trained to predict each caption token from the regions and the
tokens before it, it gets a signal per word: to say "red … left of … blue" it has to
look at where red is. A caption's match logit is then its pointwise mutual information
with the image,

    log p(text | regions) − log p(text | no image),

summed over its tokens (the second term from the same scorer reading a learned "no
image" in place of the regions, trained beside the first). For a search the second term
is the same for every candidate; for ``match``, where candidate texts differ, it removes
each text's own likelihood (short, common texts would otherwise win). Self-attention is
causal so that no token sees the one it predicts; for a text tower that is not causal
(Hugging Face towers) only the words' own embeddings are read, not the tower's states.

The caption head names the training captions' commonest tokens (``MAX_VOCAB`` at most;
any other token is one class). Past ``ADAPTIVE_ABOVE`` classes it is an adaptive softmax
(:class:`AdaptiveHead`): a query's tokens are mostly common words, and normalising over a
few hundred classes instead of thousands took a fifth (bf16) to a quarter (fp32) off a
rerank of 100 from kept reads.

A search scores one query against K images: the query's steps before it first reads an
image (its projection and the first self-attention) are the same for all K and run once.

**The match head** (``score="match"``, scorers trained before the caption score): a
logit from the end-of-text token, trained listwise against hard negatives.

The image is read as its ``prefix`` tokens (CoCa's class token: see
:class:`~vtsearch.config.RegionLayout`), each with a learned position of its own, then
its grid of regions, each with a learned row and column. ``region_layers`` self-attention
blocks among them come first (``train-reranker`` uses one): cross-attention averages
what a word looks at, so a shape that four patches each see a piece of has to be put
together before the text reads it.

A text token is the text tower's contextual state beside the word's own input embedding
(its token embedding plus position: see ``Encoder.encode_text_features``). Both inputs
are layer-normed, and the scorer's own positions (of tokens, and of regions on the grid)
start at the scale of the normed inputs, not at the usual 0.02.

    final = stage1_similarity + w · match_logit,   w fitted on held-out captions, starting at 0

With ``w = 0`` the final score *is* the stage-1 score, so an untrained scorer reproduces
stage-1 order exactly and reranking can never hurt before it is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SCORES = ("caption", "match")
ADAPTIVE_DIV = 2.0  # an adaptive caption head's rarer bands read the state at width / 2, / 4, ...
ADAPTIVE_BANDS = (512, 2048)  # ... and start at these classes (commonest first), past ADAPTIVE_ABOVE classes
ADAPTIVE_ABOVE = 1024


def head_cutoffs(classes: int) -> tuple[int, ...]:
    """The bands of a caption head over ``classes`` classes: none (one softmax) up to
    ``ADAPTIVE_ABOVE``, then an adaptive head (:class:`AdaptiveHead`)."""
    return () if classes <= ADAPTIVE_ABOVE else tuple(cut for cut in ADAPTIVE_BANDS if cut < classes)


@dataclass(frozen=True)
class FusionConfig:
    text_dim: int  # width of a text token (contextual state ⊕ word embedding)
    region_dim: int  # width of the region features
    grid: int  # regions form a grid × grid square
    prefix: int = 0  # tokens before the grid in each image's regions
    max_tokens: int = 77  # the text tower's context length
    width: int = 128
    layers: int = 2
    region_layers: int = 0  # self-attention blocks over an image's regions, before the text reads them
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    position_scale: float = 1.0  # initial std of the learned token and region positions
    score: str = "match"  # "caption": PMI of the caption head; "match": the match head
    vocab: tuple[int, ...] = ()  # token ids the caption head names, commonest first; any other id is one class
    head_cutoffs: tuple[int, ...] = ()  # where an adaptive caption head's bands start (none: one softmax)
    word_dim: int = 0  # trailing width of a text token that is the word's own input embedding
    causal_states: bool = True  # the tower's contextual state of a token saw no later token
    causal: bool = False  # causal self-attention (always, with a caption head)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {self.score!r}")
        object.__setattr__(self, "vocab", tuple(int(i) for i in self.vocab))
        object.__setattr__(self, "head_cutoffs", tuple(int(i) for i in self.head_cutoffs))
        if self.score == "caption" and not self.causal:
            object.__setattr__(self, "causal", True)

    @property
    def text_in_dim(self) -> int:
        """What the scorer reads of a text token: all of it, or (when a caption head must
        not see later words through a bidirectional tower's states) the word embedding."""
        return self.text_dim if self.causal_states or not self.word_dim else self.word_dim

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vocab"], data["head_cutoffs"] = list(self.vocab), list(self.head_cutoffs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _mlp(config: FusionConfig) -> nn.Sequential:
    """A block's MLP: width → mlp_ratio · width → width."""
    hidden = int(config.width * config.mlp_ratio)
    return nn.Sequential(nn.Linear(config.width, hidden), nn.GELU(), nn.Linear(hidden, config.width),
                         nn.Dropout(config.dropout))


class FusionBlock(nn.Module):
    """Pre-norm: text self-attention, then text → regions cross-attention, then an MLP."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        width = config.width
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, config.heads, dropout=config.dropout, batch_first=True)
        self.ln_cross = nn.LayerNorm(width)
        self.ln_regions = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, config.heads, dropout=config.dropout, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = _mlp(config)

    def forward(
        self,
        text: torch.Tensor,  # (B, T, W)
        text_padding: torch.Tensor,  # (B, T) True at padding positions
        regions: torch.Tensor,  # (B, R, W)
        need_weights: bool = False,
        causal_mask: torch.Tensor | None = None,  # (T, T) True where a token may not look
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.read(self.attend_text(text, text_padding, causal_mask), regions, need_weights)

    def attend_text(self, text: torch.Tensor, text_padding: torch.Tensor,
                    causal_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The self-attention step: (B, T, W) → (B, T, W), the image not yet read."""
        normed = self.ln_self(text)
        if causal_mask is not None:  # padding comes after the real tokens: causality hides it
            attended, _ = self.self_attn(normed, normed, normed, attn_mask=causal_mask, need_weights=False)
        else:
            attended, _ = self.self_attn(normed, normed, normed, key_padding_mask=text_padding,
                                         need_weights=False)
        return text + attended  # (B, T, W)

    def read(self, text: torch.Tensor, regions: torch.Tensor,
             need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cross-attention step and the MLP: (B, T, W) text, (B, R, W) regions."""
        attended, weights = self.attend_regions(self.ln_cross(text), regions, need_weights)
        text = text + attended
        text = text + self.mlp(self.ln_mlp(text))  # (B, T, W)
        return text, weights

    def attend_regions(self, normed: torch.Tensor, regions: torch.Tensor,
                       need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``cross_attn`` (its weights, as ``nn.MultiheadAttention`` keeps them) from (B, T, W)
        normed text to (B, R, W) regions → (B, T, W), and (B, T, R) weights averaged over
        heads when asked. Written out rather than called: the module projects keys and values
        through a batched product of transposed copies, the largest cost of a rerank from
        kept reads; here they are one product, and an image seen by every text once."""
        attention = self.cross_attn
        width, heads = attention.embed_dim, attention.num_heads
        one_image = len(regions) > 1 and regions.stride(0) == 0  # a match: K texts, one image
        keys = self.ln_regions(regions[:1] if one_image else regions)
        pairs = F.linear(keys, attention.in_proj_weight[width:], attention.in_proj_bias[width:])  # (B|1, R, 2W)
        if one_image:
            pairs = pairs.expand(len(normed), -1, -1)
        query = F.linear(normed, attention.in_proj_weight[:width], attention.in_proj_bias[:width])  # (B, T, W)

        def split(values: torch.Tensor) -> torch.Tensor:  # (B, n, W) → (B, heads, n, W / heads)
            return values.unflatten(-1, (heads, -1)).transpose(1, 2)

        query, key, value = split(query), split(pairs[..., :width]), split(pairs[..., width:])
        dropout = attention.dropout if self.training else 0.0
        weights = None
        # written out when the weights are wanted, and under bf16 on a CPU, where it is ~3x
        # faster than SDPA's kernel for a rerank's shapes (softmax in float32 either way)
        if need_weights or (query.device.type == "cpu" and query.dtype == torch.bfloat16):
            weights = ((query @ key.transpose(-1, -2)).float() * query.shape[-1] ** -0.5).softmax(dim=-1)
            attended = F.dropout(weights, dropout).to(value.dtype) @ value  # (B, heads, T, W / heads)
        else:
            attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        attended = attention.out_proj(attended.transpose(1, 2).flatten(2))  # (B, T, W)
        return attended, weights.mean(dim=1) if need_weights else None  # weights (B, T, R)


class RegionBlock(nn.Module):
    """Pre-norm self-attention among an image's regions, then an MLP: lets neighbouring
    cells pool what each sees of one thing (a shape straddling four patches)."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        width = config.width
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, config.heads, dropout=config.dropout, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = _mlp(config)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:  # (B, R, W) → (B, R, W)
        normed = self.ln_self(regions)
        regions = regions + self.self_attn(normed, normed, normed, need_weights=False)[0]
        return regions + self.mlp(self.ln_mlp(regions))


class AdaptiveHead(nn.Module):
    """An adaptive softmax (Grave et al., 2017) for a large caption vocabulary: one softmax
    over the ``cutoffs[0]`` commonest classes and one class per rarer band; a token of a
    band adds its log-probability within the band, from the state narrowed by
    ``ADAPTIVE_DIV`` per band. A query's tokens are mostly common, so most positions
    normalise over a few hundred classes instead of thousands (the exact log-probability
    of this model, not an approximation of a full softmax)."""

    def __init__(self, width: int, classes: int, cutoffs: Sequence[int]):
        super().__init__()
        self.bounds = [*cutoffs, classes]  # band b holds classes bounds[b] .. bounds[b+1] - 1
        if any(low >= high for low, high in zip(self.bounds, self.bounds[1:])) or self.bounds[0] < 1:
            raise ValueError(f"head cutoffs must rise from 1 to below {classes}, not {tuple(cutoffs)}")
        self.head = nn.Linear(width, self.bounds[0] + len(cutoffs))
        narrow = [max(1, int(width / ADAPTIVE_DIV ** (band + 1))) for band in range(len(cutoffs))]
        self.bands = nn.ModuleList(
            nn.Sequential(nn.Linear(width, dim, bias=False), nn.Linear(dim, high - low, bias=False))
            for dim, low, high in zip(narrow, self.bounds, self.bounds[1:]))

    def forward(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(..., W) states and (...) target classes → (...) float32 log-probabilities."""
        shape, states, targets = targets.shape, states.reshape(-1, states.shape[-1]), targets.reshape(-1)
        shortlist = self.bounds[0]
        band = torch.bucketize(targets, torch.tensor(self.bounds, device=targets.device), right=True) - 1  # -1: head
        head = F.log_softmax(self.head(states).float(), dim=-1)  # (N, shortlist + bands)
        picked = head.gather(1, torch.where(band < 0, targets, shortlist + band)[:, None]).squeeze(1)  # (N,)
        for number, layer in enumerate(self.bands):
            rows = (band == number).nonzero().squeeze(1)
            if len(rows):
                within = F.log_softmax(layer(states[rows]).float(), dim=-1)  # (n, band size)
                picked = picked.index_add(0, rows, within.gather(1, (targets[rows] - self.bounds[number])[:, None])
                                          .squeeze(1))
        return picked.view(shape)


@dataclass(frozen=True)
class TextBatch:
    """B texts as the scorer reads them, padded to the longest."""

    states: torch.Tensor  # (B, T, Dt) token states (contextual state ⊕ word embedding)
    ids: torch.Tensor  # (B, T) int64 token ids; 0 past a text's end
    lengths: torch.Tensor  # (B,) real tokens; the last real one is end-of-text

    @classmethod
    def pad(cls, states: Sequence[torch.Tensor], ids: Sequence[torch.Tensor]) -> "TextBatch":
        """B × (T_i, Dt) states and B × (T_i,) ids → one padded batch."""
        lengths = torch.tensor([len(row) for row in states], dtype=torch.long)
        return cls(nn.utils.rnn.pad_sequence(list(states), batch_first=True).float(),
                   nn.utils.rnn.pad_sequence([row.long() for row in ids], batch_first=True), lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def repeat_each(self, count: int) -> "TextBatch":
        """Each text ``count`` times in a row: (B·count, ...)."""
        return TextBatch(self.states.repeat_interleave(count, dim=0), self.ids.repeat_interleave(count, dim=0),
                         self.lengths.repeat_interleave(count))

    def rows(self, start: int, stop: int | None = None) -> "TextBatch":
        """Texts ``start`` to ``stop`` (as padded as the whole batch)."""
        return TextBatch(self.states[start:stop], self.ids[start:stop], self.lengths[start:stop])

    def expand(self, count: int) -> "TextBatch":
        """A one-text batch seen ``count`` times, without copying."""
        return TextBatch(self.states.expand(count, -1, -1), self.ids.expand(count, -1), self.lengths.expand(count))

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(self.states.to(device), self.ids.to(device), self.lengths.to(device))


@dataclass(frozen=True)
class ReadImages:
    """K images as the text blocks read them (``FusionScorer.read_image``'s output): what
    an index keeps per image for its trained scorer, so that a query need not read them
    again (:mod:`vtsearch.query.readcache`)."""

    values: torch.Tensor  # (K, P+R, W)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def to(self, device: torch.device) -> "ReadImages":
        return ReadImages(self.values.to(device))


class FusionScorer(nn.Module):
    """Scores (text tokens, regions) pairs; see the module docstring."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.text_norm = nn.LayerNorm(config.text_in_dim)
        self.text_in = nn.Linear(config.text_in_dim, width)
        self.text_positions = nn.Parameter(torch.randn(config.max_tokens, width) * config.position_scale)  # (Tmax, W)
        self.region_norm = nn.LayerNorm(config.region_dim)
        self.region_in = nn.Linear(config.region_dim, width)
        # learned 2-D position of each region: "left of" and "above" are about where it is
        self.region_row = nn.Parameter(torch.randn(config.grid, width) * config.position_scale)  # (g, W)
        self.region_col = nn.Parameter(torch.randn(config.grid, width) * config.position_scale)  # (g, W)
        self.region_prefix = (nn.Parameter(torch.randn(config.prefix, width) * config.position_scale)  # (P, W)
                              if config.prefix else None)  # (scorers of indexes without a prefix have none)
        self.region_blocks = nn.ModuleList(RegionBlock(config) for _ in range(config.region_layers))
        self.blocks = nn.ModuleList(FusionBlock(config) for _ in range(config.layers))
        self.ln_out = nn.LayerNorm(width)
        if config.score == "match":
            self.head = nn.Linear(width, 1)
        else:
            self.no_image = nn.Parameter(torch.randn(1, width) * config.position_scale)  # what "no image" reads
            classes = len(config.vocab) + 1  # class 0: any other token; then the vocabulary in its order
            self.caption_head = (AdaptiveHead(width, classes, config.head_cutoffs) if config.head_cutoffs
                                 else nn.Linear(width, classes))
            vocab = torch.tensor(config.vocab, dtype=torch.long)
            order = torch.argsort(vocab)
            self.register_buffer("vocab", vocab[order], persistent=False)  # the ids sorted, to look up
            self.register_buffer("vocab_class", order + 1, persistent=False)  # ... and each one's class
        self.rerank_weight = nn.Parameter(torch.zeros(()))  # w: starts at 0 = stage-1 order

    def region_positions(self) -> torch.Tensor:
        grid, width = self.config.grid, self.config.width
        positions = self.region_row[:, None, :] + self.region_col[None, :, :]  # (g, g, W)
        positions = positions.reshape(grid * grid, width)  # (R, W), row-major like the patches
        if self.region_prefix is None:
            return positions
        return torch.cat([self.region_prefix, positions])  # (P + R, W)

    def read_image(self, regions: torch.Tensor) -> torch.Tensor:
        """(B, P+R, Dr) regions → (B, P+R, W) what the text blocks read: projected, placed,
        and through the region blocks."""
        image = self.region_in(self.region_norm(regions)) + self.region_positions()
        for block in self.region_blocks:
            image = block(image)
        return image

    def hidden(self, texts: TextBatch, regions: torch.Tensor | ReadImages | None,
               need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Token states (B, T, W) after the blocks, having read ``regions`` (B, P+R, Dr) or,
        with None, the learned "no image"; per-layer attention (B, T, P+R) when asked.
        Images already read (``ReadImages``) go straight to the text blocks."""
        batch = len(texts)
        if isinstance(regions, ReadImages):
            image = regions.values.float()
        elif regions is None:
            image = self.no_image[None].expand(batch, -1, -1)  # (B, 1, W)
        elif regions.stride(0) == 0:  # one image seen B times (a match against B texts): read it once
            image = self.read_image(regions[:1]).expand(batch, -1, -1)
        else:
            image = self.read_image(regions)  # (B, P+R, W)
        return self.attend(texts, image, need_weights)

    def attend(self, texts: TextBatch, image: torch.Tensor,
               need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``hidden`` for images already read (``read_image``): (B, P+R, W) → token states (B, T, W)."""
        batch, tokens = texts.states.shape[:2]
        states = texts.states[..., -self.config.text_in_dim:]  # the word part alone, when that is all it reads
        one_text = batch > 1 and texts.states.stride(0) == 0  # a search: one query against every image
        if one_text:
            states = states[:1]
        text = self.text_in(self.text_norm(states)) + self.text_positions[:tokens]  # (B, T, W), or (1, T, W)
        positions = torch.arange(tokens, device=text.device)  # (T,)
        text_padding = positions[None, :] >= texts.lengths[:, None]  # (B, T)
        causal_mask = positions[None, :] > positions[:, None] if self.config.causal else None  # (T, T)
        attention = []
        for number, block in enumerate(self.blocks):
            if number == 0 and one_text:  # until it first reads the image, the query is the same for all: once
                text = block.attend_text(text, text_padding[:1], causal_mask).expand(batch, -1, -1)
                text, weights = block.read(text, image, need_weights)
            else:
                text, weights = block(text, text_padding, image, need_weights, causal_mask)
            if weights is not None:
                attention.append(weights)
        return text, attention

    def forward(
        self,
        texts: TextBatch,
        regions: torch.Tensor | ReadImages,  # (B, P+R, Dr), or already read (B, P+R, W)
        need_weights: bool = False,
        prior: torch.Tensor | None = None,  # (B,) log p(text | no image), when already known
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Match logits (B,), and per-layer attention weights (B, T, P+R) when asked."""
        hidden, attention = self.hidden(texts, regions, need_weights)
        return self.match_logit(hidden, texts, prior), attention

    def match_logit(self, hidden: torch.Tensor, texts: TextBatch, prior: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) match logits from the token states (B, T, W) of ``hidden`` or ``attend``."""
        if self.config.score == "caption":
            if prior is None:
                prior = self.text_log_likelihood(texts, None)
            return self.log_likelihood(hidden, texts) - prior
        end_of_text = hidden[torch.arange(len(texts), device=hidden.device), texts.lengths - 1]  # (B, W)
        return self.head(self.ln_out(end_of_text)).squeeze(-1)

    def text_log_likelihood(self, texts: TextBatch, regions: torch.Tensor | None) -> torch.Tensor:
        """(B,) log p(text | regions), or with None log p(text | no image)."""
        return self.log_likelihood(self.hidden(texts, regions)[0], texts)

    def log_likelihood(self, hidden: torch.Tensor, texts: TextBatch) -> torch.Tensor:
        """(B,) the summed log-probability of each text's tokens after the first."""
        return self.token_log_probs(hidden, texts).sum(dim=1)

    def caption_loss(self, texts: TextBatch, regions: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy of predicting each next token (the captioning objective)."""
        return mean_token_loss(self.token_log_probs(self.hidden(texts, regions)[0], texts), texts)

    def token_log_probs(self, hidden: torch.Tensor, texts: TextBatch) -> torch.Tensor:
        """(B, T-1) the log-probability of each text's token after the first; 0 past its end."""
        targets, real = self._next_tokens(texts)  # (B, T-1) classes, and which of them are real tokens
        normed = self.ln_out(hidden[:, :-1]).float()  # (B, T-1, W)
        if isinstance(self.caption_head, AdaptiveHead):
            return self.caption_head(normed, targets) * real
        log_probs = F.log_softmax(self.caption_head(normed).float(), dim=-1)  # (B, T-1, V), float32 under autocast
        return log_probs.gather(-1, targets[..., None]).squeeze(-1) * real

    def _next_tokens(self, texts: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The class of each token that comes next (B, T-1), and which are real (not padding)."""
        following = texts.ids[:, 1:].contiguous()  # (B, T-1)
        if len(self.vocab):
            slot = torch.searchsorted(self.vocab, following).clamp(max=len(self.vocab) - 1)
            targets = torch.where(self.vocab[slot] == following, self.vocab_class[slot], 0)
        else:
            targets = torch.zeros_like(following)
        positions = torch.arange(1, following.shape[1] + 1, device=following.device)  # (T-1,)
        return targets, (positions[None, :] < texts.lengths[:, None]).float()

    def final_scores(self, stage1: torch.Tensor, match_logit: torch.Tensor,
                     weight: float | None = None) -> torch.Tensor:
        """``stage1 + w · match_logit``, elementwise (``weight`` instead of w when given)."""
        return stage1 + (self.rerank_weight if weight is None else weight) * match_logit


def mean_token_loss(token_log_probs: torch.Tensor, texts: TextBatch) -> torch.Tensor:
    """The captioning loss, the mean cross-entropy per predicted token, from (B, T-1)
    ``token_log_probs`` (0 past each text's end)."""
    return -token_log_probs.sum() / (texts.lengths - 1).clamp(min=0).sum().clamp(min=1)
