"""Stage: encode. An open_clip dual encoder turning images and texts into unit vectors.

Loading and checking weights live in :mod:`.weights`; the towers' layouts in
:mod:`.image_tower` and :mod:`.text_tower`; float32 or bfloat16 in :mod:`.precision`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..config import DEFAULT_REGION_GRID, DecodeConfig, EncoderSpec, RegionLayout
from ..errors import ModelLoadError, ModelMismatchError
from ..records import ImageFeatures, TextFeatures
from . import text_tower
from .image_tower import image_tower
from .precision import BF16_AGREEMENT, resolve_precision
from .weights import PROBE_TEXT, Tokenizer, Transform, load_open_clip

__all__ = ["Encoder", "MAX_ASPECT"]

log = logging.getLogger(__name__)

MAX_ASPECT = 3.0  # longer images are centre-cut to this ratio before a centre-crop preprocess


class Encoder:
    """A loaded open_clip model with its preprocessing and tokenizer, in eval mode.

    ``precision`` is how it computes: ``fp32``, ``bf16`` (the model is cast in place) or
    ``auto``, which chooses for the machine (:mod:`.precision`); ``spec.precision``
    records the outcome.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        model: torch.nn.Module,
        preprocess: Transform,
        tokenizer: Tokenizer,
        device: torch.device,
        precision: str = "auto",
    ):
        self.precision = resolve_precision(precision, device)
        self.spec = replace(spec, precision=self.precision)
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.embed_dim = int(text_tower.embed_dim(model))
        self.preprocess_config: dict[str, Any] = dict(getattr(model.visual, "preprocess_cfg", {}))
        size = self.preprocess_config.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = int(max(size) if isinstance(size, (tuple, list)) else size)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # Both towers return their token states too, set once here rather than toggled
        # per call (calls may come from several threads). Never call model.encode_image
        # or model.encode_text on this model: use the methods below.
        self.image = image_tower(self.model, self.embed_dim)
        text_tower.enable_text_tokens(self.model)
        self.pad_id = int(tokenizer([""])[0, -1])  # the empty text's far end is padding
        self.bf16_agreement: float | None = None  # the probe's cosine in bfloat16 to float32
        if self.precision == "bf16":
            self._to_bfloat16()
        self.input_dtype = next(self.model.visual.parameters()).dtype

    @classmethod
    def load(cls, spec: EncoderSpec, device: torch.device, precision: str = "auto") -> "Encoder":
        """Load the model ``spec`` names, or raise :class:`ModelLoadError`. With ``auto``
        a model that disagrees with itself in bfloat16 is loaded again in float32."""
        model, preprocess, tokenizer = load_open_clip(spec)
        try:
            return cls(spec, model, preprocess, tokenizer, device, precision)
        except ModelMismatchError:
            if precision != "auto":
                raise
        log.warning("%s embeds differently in bfloat16; running it in float32", spec.describe())
        model, preprocess, tokenizer = load_open_clip(spec)
        return cls(spec, model, preprocess, tokenizer, device, "fp32")

    def _to_bfloat16(self) -> None:
        """Cast the model to bfloat16, or raise :class:`ModelMismatchError` when its probe
        vector there falls below :data:`BF16_AGREEMENT` of its float32 one."""
        reference = self.encode_texts([PROBE_TEXT])[0]
        self.model.to(torch.bfloat16)
        self.bf16_agreement = float(reference @ self.encode_texts([PROBE_TEXT])[0])
        if self.bf16_agreement < BF16_AGREEMENT:
            raise ModelMismatchError(
                f"{self.spec.describe()} embeds the probe text in bfloat16 at cosine {self.bf16_agreement:.4f} "
                f"to float32 (below {BF16_AGREEMENT}): run it in float32")

    def decode_config(self, **options: Any) -> DecodeConfig:
        """How files must be decoded for this model (``options``: per-run limits)."""
        center_crop = self.preprocess_config.get("resize_mode", "shortest") == "shortest"
        return DecodeConfig(image_size=self.image_size, max_aspect=MAX_ASPECT if center_crop else None,
                            **options)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this encoder."""
        return {
            **self.spec.to_dict(),
            "embed_dim": self.embed_dim,
            "preprocess": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in self.preprocess_config.items()},
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # images

    @property
    def supports_regions(self) -> bool:
        """True for towers with a patch grid whose features serve as the image's regions."""
        return self.image.grid is not None

    @property
    def regions_unavailable(self) -> str | None:
        """Why this encoder has no regions, in a few words (None when it has them)."""
        return self.image.no_regions

    @property
    def native_grid(self) -> tuple[int, int] | None:
        return self.image.grid

    def region_layout(self, stored: bool = True, grid: int | None = None) -> RegionLayout | None:
        """How a new index keeps this encoder's regions: its patch grid, average-pooled to
        ``grid`` cells a side (never finer than the native grid) or by default by a whole
        factor to about :data:`DEFAULT_REGION_GRID` (a 14 x 14 grid to 7 x 7; an 8 x 8 one
        stays: pooling 8 cells into 7 would smear each object over its neighbours); for a
        tower with prefix tokens of its own (CoCa's, read by its decoder as they are) all of
        its tokens; None when it has no region tokens."""
        native = self.native_grid
        if native is None:
            return None
        if self.image.prefix:
            if native[0] != native[1]:
                raise ModelLoadError(f"{self.spec.describe()} has a {native[0]} x {native[1]} patch grid; "
                                     "vtsearch keeps square ones")
            return RegionLayout(grid=native[0], dim=self.image.region_dim, stored=stored, prefix=self.image.prefix)
        side = min(grid, min(native)) if grid else whole_factor_side(min(native), DEFAULT_REGION_GRID)
        source = self.image.sources[0]
        return RegionLayout(grid=side, dim=self.image.region_dim_of(source), stored=stored, source=source)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed pixels → (B, D) float32 unit vectors."""
        return self.encode_image_features(pixels, None).vectors

    @torch.inference_mode()
    def encode_image_features(self, pixels: torch.Tensor, layout: RegionLayout | None) -> ImageFeatures:
        """Vectors and, when a ``layout`` is given, regions as it keeps them: (B, R, dim)."""
        pixels = pixels.to(self.device, dtype=self.input_dtype, non_blocking=True)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if layout is not None:
            self._check_fits(layout)
        with self._autocast():
            pooled, tokens = self.image(pixels, regions=layout is not None,
                                        source=layout and layout.source)  # (B, D), (B, prefix + h*w, dim)
        if tokens is None or layout is None:
            return ImageFeatures(_unit_rows(pooled), None)
        prefix = self.image.prefix  # the tower's tokens before the grid (CoCa's class token)
        grid = _pool_grid(tokens[:, prefix:].float(), self.native_grid, layout.grid)  # (B, g*g, region_dim)
        return ImageFeatures(_unit_rows(pooled), torch.cat([tokens[:, :prefix].float(), grid], dim=1))

    def _check_fits(self, layout: RegionLayout) -> None:
        """Refuse regions kept in a way this tower cannot give (another model's index)."""
        image = self.image
        if (layout.prefix != image.prefix or layout.source not in image.sources
                or layout.dim != image.region_dim_of(layout.source)):
            raise ModelMismatchError(f"regions kept as {layout.prefix} + {layout.grid}x{layout.grid}x{layout.dim} "
                                     f"({layout.source}) do not fit {self.spec.describe()}")

    def region_crop(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of an upright ``width`` × ``height`` image the model's input square (and
        so the region grid) covers, as fractions (x0, y0, x1, y1); beyond 0..1 where the
        preprocessing pads ("longest")."""
        mode = self.preprocess_config.get("resize_mode", "shortest")
        if mode == "squash" or width <= 0 or height <= 0:
            return (0.0, 0.0, 1.0, 1.0)
        side = min(width, height) if mode == "shortest" else max(width, height)
        dx, dy = (width - side) / 2 / width, (height - side) / 2 / height
        return (dx, dy, 1.0 - dx, 1.0 - dy)

    # texts

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts → (N, D) float32 unit vectors."""
        return self.encode_text_features(texts).vectors

    @property
    def context_length(self) -> int:
        """How many tokens the text tower reads (start and end tokens included)."""
        return int(getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", 77))

    def fits_context(self, text: str) -> bool:
        """True when ``text`` needs no more tokens than the text tower reads. Byte-level
        BPE never makes more tokens than UTF-8 bytes, so short texts are not tokenized."""
        if len(text.encode("utf-8")) + 2 <= self.context_length:
            return True
        count = self.token_count(text)
        return count is None or count <= self.context_length

    def token_count(self, text: str) -> int | None:
        """Tokens ``text`` needs, start and end included (None: the tokenizer cannot tell).

        Counted in a context four times the model's; a text that does not fit even there
        counts as that long context.
        """
        try:
            row = self.tokenizer([text], context_length=4 * self.context_length)[0]
        except TypeError:
            return None
        return int((row != self.pad_id).sum())

    def token_strings(self, text: str, count: int) -> list[str]:
        """The first ``count`` tokens of ``text`` as readable strings (start and end included)."""
        ids = self.tokenizer([text])[0].tolist()[:count]
        if hasattr(self.tokenizer, "decoder") and hasattr(self.tokenizer, "decode"):  # open_clip's BPE
            return [self.tokenizer.decode([token]).strip() for token in ids]
        inner = getattr(self.tokenizer, "tokenizer", None)  # a Hugging Face tokenizer
        if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
            return [str(token) for token in inner.convert_ids_to_tokens(ids)]
        return [f"#{token}" for token in ids]

    def probe_vector(self) -> list[float]:
        """The unit vector of :data:`PROBE_TEXT`, rounded: the index keeps it, and an
        encoder whose weights changed since (same name, same width) gives another one."""
        return [round(float(x), 5) for x in self.encode_texts([PROBE_TEXT])[0]]

    @property
    def text_causal(self) -> bool:
        """The text tower's token states are causal (see ``text_tower.causal_states``)."""
        return text_tower.causal_states(self.model)

    @property
    def word_dim(self) -> int:
        """Width of the word-embedding part at the end of a stage-2 text token."""
        return text_tower.word_width(self.model)

    @property
    def text_token_dim(self) -> int:
        """Width of one text token for stage 2: contextual state ⊕ word embedding."""
        return self.embed_dim + self.word_dim

    @torch.inference_mode()
    def encode_text_features(self, texts: list[str]) -> TextFeatures:
        """Unit vectors plus, per token through the end-of-text token, the tower's
        contextual state beside the word's own input embedding (token + position).

        The contextual states of a tower trained only through its pooled vector blur which
        word stands where ("a red cube left of a blue ball" against the same words in
        another order); the input embedding keeps word and position crisp for the scorer.
        """
        tokens = self.tokenizer(texts).to(self.device)
        with self._autocast():
            run = text_tower.text_states(self.model, tokens, self.pad_id)
        states = torch.cat([run.states.float(), run.words.float()], dim=-1).cpu()  # (B, T, D + width)
        ids = tokens.cpu()
        lengths = run.lengths.tolist()
        return TextFeatures(
            vectors=_unit_rows(run.pooled),
            # each row its own copy: a kept row does not hold the whole batch's (B, ctx, ·) tensor
            tokens=[states[row, :length].clone() for row, length in enumerate(lengths)],
            ids=[ids[row, :length].clone() for row, length in enumerate(lengths)],
            hidden=None if run.hidden is None else [run.hidden[row, :length].clone() for row, length in enumerate(lengths)],
        )


def whole_factor_side(native: int, about: int) -> int:
    """The side of a ``native`` grid average-pooled by the whole factor that comes closest
    to ``about`` cells (7 of 14, 8 of 16 or 24; 8 of 8, 9 of 9)."""
    factor = max(1, round(native / about))
    return -(-native // factor)


def _pool_grid(tokens: torch.Tensor, native: tuple[int, int], grid: int) -> torch.Tensor:
    """(B, h*w, D) patch tokens → (B, g*g, D), average-pooled when g < the native grid."""
    batch, count, dim = tokens.shape
    height, width = native
    if grid >= height and grid >= width:
        return tokens
    maps = tokens.reshape(batch, height, width, dim).permute(0, 3, 1, 2)  # (B, D, h, w)
    pooled = torch.nn.functional.adaptive_avg_pool2d(maps, grid)  # (B, D, g, g)
    return pooled.flatten(2).transpose(1, 2)  # (B, g*g, D)


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)
