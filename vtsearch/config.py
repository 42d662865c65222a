"""Typed, defaulted configuration that round-trips through JSON."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_INDEX_DIR = Path("indexes") / "default"
INDEX_ENV_VAR = "VTSEARCH_INDEX"

ITEM_BYTES = {"float16": 2, "float32": 4}  # region dtypes (no numpy at import)

# How the encoder computes: fp32; bf16 (the model cast to bfloat16: 2-4x faster on CPUs
# with AVX512-BF16 or AMX, slower on others); auto: bf16 where the CPU has it, fp32 on
# other CPUs, fp16 autocast on a GPU. Chosen per run (vtsearch.encoder.precision).
PRECISION_CHOICES = ("auto", "fp32", "bf16")

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, ignoring unknown keys (newer writers may add some)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EncoderSpec:
    """Which open_clip model embeds the collection.

    ``model`` is an open_clip model name (``ViT-B-32``), ``hf-hub:org/name`` or
    ``local-dir:/path``; ``pretrained`` is the weight tag for a plain model name and
    empty for the other two forms, whose location already names the weights.
    ``precision`` records how an encoder computed (``fp32``, ``bf16``, ``fp16``; empty:
    not recorded); it is a record, not part of the model's identity, so it takes no part
    in comparisons.
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    precision: str = field(default="", compare=False)

    @classmethod
    def parse(cls, model: str | None, pretrained: str | None = None) -> "EncoderSpec":
        """Normalise user input: local dirs become absolute, tags only for named models."""
        model = (model or DEFAULT_MODEL).strip()
        if model.startswith(LOCAL_DIR_PREFIX):
            local = Path(model[len(LOCAL_DIR_PREFIX):]).expanduser().resolve()
            return cls(model=f"{LOCAL_DIR_PREFIX}{local}", pretrained="")
        if model.startswith(HF_HUB_PREFIX):
            return cls(model=model, pretrained="")
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if model == DEFAULT_MODEL else ""
        return cls(model=model, pretrained=pretrained)

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained})" if self.pretrained else self.model

    def accepts(self, requested: "EncoderSpec") -> bool:
        """Whether an index built with this spec serves a request for ``requested`` (a
        request without a weight tag takes whichever the index has)."""
        if self.model != requested.model:
            return False
        return not requested.pretrained or requested.pretrained == self.pretrained

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.precision:
            del data["precision"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSpec":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DecodeConfig:
    """How image files become model input.

    ``max_pixels``: images with more pixels are refused as decompression bombs
    (Pillow's default limit unless overridden). ``draft``: let JPEG decode at a reduced
    scale that is still at least the model's input size (much faster on big photos).
    ``max_aspect``: for models whose preprocessing scales the short side to the input
    size and crops the centre, an image longer than this many times its width (or wider
    than its height) is first cut to that ratio around its centre: the crop keeps every
    pixel the model would see, and a 30000 × 3 strip no longer scales to gigabytes.
    ``timeout_s``: a single file still decoding after this long is skipped; the decode
    process is killed, so the limit holds in any thread and for a codec stuck in C (0: none).
    """

    image_size: int = 224
    max_pixels: int = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS
    allow_truncated: bool = False
    draft: bool = True
    max_aspect: float | None = None  # None: never crop (the preprocessing does not crop)
    timeout_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecodeConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class AnnConfig:
    """The FAISS index kind and its per-query settings. Ids are always catalog keys.

    With ``auto`` (the default) the kind follows the collection size (exact search for
    small collections, IVF with 4-bit scalar-quantized codes above a threshold: see
    :func:`vtsearch.store.annbuild.choose_config`) and the index is retrained when the
    collection has grown tenfold since ``trained_on``. ``nprobe`` and ``k_factor`` (IVF
    lists probed; candidates re-scored exactly from the catalog per result wanted) are
    calibrated at build time to reach ``recall_target`` recall@10 against exact search;
    ``calibrated_recall`` is what the calibration measured.
    """

    factory: str = "IDMap2,Flat"
    metric: str = "inner_product"
    auto: bool = True
    nprobe: int = 0
    k_factor: int = 1
    trained_on: int = 0
    recall_target: float = 0.95
    calibrated_recall: float | None = None
    on_disk: bool = False  # IVF lists merged into a memory-mapped data file (vtsearch.store.ondisk)
    data_file: str | None = None  # that file's name, beside ann.faiss

    @property
    def exact(self) -> bool:
        return "IVF" not in self.factory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnnConfig":
        return _from_dict(cls, data)


DEFAULT_REGION_GRID = 7  # regions are pooled to about this square grid, by a whole factor


@dataclass(frozen=True)
class RegionLayout:
    """How regions are kept: ``prefix`` tokens, then a square ``grid`` of ``dim``-wide
    features, or not stored.

    A plain patch grid has no prefix. CoCa's decoder reads its image tower's tokens before
    the attentional pooler, class token first (ViT-B-32: 1 + 7 x 7 tokens of 768); the
    pooler runs per query on the shortlist (``vtsearch.query.decoder``). A manifest
    without ``prefix`` (every index before it) reads as 0.

    ``source`` says where in the image tower they come from: ``final``, its output tokens
    (projected into the joint space where the tower projects), or ``blocks``, an open_clip
    ViT's last block before its final norm and projection (what new CLIP-ViT indexes keep:
    see :mod:`vtsearch.encoder.image_tower`). A manifest without it reads as ``final``.
    """

    grid: int
    dim: int
    stored: bool = True
    dtype: str = "float16"
    prefix: int = 0  # tokens before the grid, in each row
    source: str = "final"  # where in the image tower: "final" or "blocks"

    @property
    def regions(self) -> int:
        """Tokens per image: the prefix and the grid."""
        return self.prefix + self.grid * self.grid

    @property
    def row_bytes(self) -> int:
        return self.regions * self.dim * ITEM_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "bytes_per_image": self.row_bytes if self.stored else 0}
        if not self.prefix:
            del data["prefix"]  # a patch grid's manifest stays as it was
        if self.source == "final":
            del data["source"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegionLayout":
        return cls(grid=int(data["grid"]), dim=int(data["dim"]), stored=bool(data.get("stored", True)),
                   dtype=str(data.get("dtype", "float16")), prefix=int(data.get("prefix", 0)),
                   source=str(data.get("source", "final")))


@dataclass(frozen=True)
class IngestOptions:
    """Per-run knobs of ``Index.add`` (not stored in the manifest)."""

    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    max_pixels: int = DecodeConfig.max_pixels
    allow_truncated: bool = False
    keep_missing: bool = False  # keep files that vanished from disk (unmounted drives)


@dataclass(frozen=True)
class Tuning:
    """Size thresholds of the search layer, chosen per process and never stored: the
    defaults suit real collections; tests and benchmarks lower them to reach the large-
    collection paths with a few hundred images."""

    ivf_threshold: int = 50_000  # an auto index switches from exact search to IVF at this size
    exact_filter_limit: int = 20_000  # a filter keeping at most this many images is searched exactly

    @classmethod
    def from_env(cls) -> "Tuning":
        """The defaults, overridden by ``VTSEARCH_IVF_THRESHOLD`` / ``VTSEARCH_EXACT_FILTER_LIMIT``."""
        return cls(**{name: int(os.environ[f"VTSEARCH_{name.upper()}"]) for name in ("ivf_threshold", "exact_filter_limit")
                      if os.environ.get(f"VTSEARCH_{name.upper()}")})


def default_index_dir() -> Path:
    """``$VTSEARCH_INDEX`` when set, else ``./indexes/default``."""
    env = os.environ.get(INDEX_ENV_VAR)
    return Path(env) if env else DEFAULT_INDEX_DIR
