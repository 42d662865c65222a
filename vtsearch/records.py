"""Small typed records handed between pipeline stages."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .config import AnnConfig, EncoderSpec, RegionLayout

if TYPE_CHECKING:  # records stay importable without torch
    import numpy as np
    import torch


@dataclass(frozen=True)
class ScannedFile:
    """A candidate image file found by the scan (absolute path, stat at scan time)."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanReport:
    """What the scan found under the paths it was given."""

    candidates: list[ScannedFile]
    not_images: int = 0
    missing: list[str] = field(default_factory=list)  # paths given that do not exist
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (dir, reason)
    roots: list[str] = field(default_factory=list)  # the given paths that exist, absolute

    def covers(self, path: str) -> bool:
        """True when the scan looked at every file that could be at ``path``.

        A path inside a folder that could not be listed was not looked at: its absence
        from the candidates says nothing about whether it still exists.
        """
        return not any(path == blind or path.startswith(blind.rstrip("/") + "/")
                       for blind, _reason in self.unreadable)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded file, preprocessed into the encoder's input tensor."""

    source: ScannedFile
    pixels: torch.Tensor  # (3, H, W) float, normalised for the model
    width: int
    height: int
    format: str
    content_hash: str
    size: int  # bytes actually read (the file may have changed since the scan)


@dataclass(frozen=True)
class DecodeFailure:
    """A file that could not be decoded, and why (recorded, never raised)."""

    source: ScannedFile
    reason: str
    content_hash: str | None = None


DecodeOutcome = DecodedImage | DecodeFailure


@dataclass(frozen=True)
class ImageRow:
    """An image as search results and the API show it."""

    id: int
    path: str
    width: int | None
    height: int | None
    format: str | None
    status: str = "indexed"  # or "error": a file the index skipped (see ErrorRecord)
    size: int | None = None  # bytes and mtime when it was read: is the file still the one indexed?
    mtime_ns: int | None = None


@dataclass(frozen=True)
class SearchResult:
    """One ranked hit: its final score and where stage 1 had put it."""

    rank: int
    id: int
    path: str
    score: float
    stage1_score: float
    stage1_rank: int
    width: int | None = None  # the catalog's row, read once with the path
    height: int | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The ranking, as ``vtsearch search --json`` and the APIs print it."""
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score,
                "stage1_score": self.stage1_score, "stage1_rank": self.stage1_rank}


@dataclass(frozen=True)
class SearchResponse:
    """Results of one query, whether they were reranked, and time spent per stage."""

    results: list[SearchResult]
    reranked: bool
    timings_ms: dict[str, float]
    notices: list[str] = field(default_factory=list)  # e.g. the query text was cut


@dataclass(frozen=True)
class ErrorRecord:
    """A file the index skipped, with its reason."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class IngestSummary:
    """The outcome of one ``Index.add`` run, by category."""

    indexed: int = 0  # newly encoded (new files and changed files)
    updated: int = 0  # of ``indexed``: files already in the index whose content changed
    unchanged: int = 0  # already indexed and untouched (nothing re-encoded)
    moved: int = 0  # indexed content found at a new path: vectors reused, nothing encoded
    removed: int = 0  # files gone from disk, removed from the index
    kept_missing: int = 0  # files gone from disk, kept in the index (--keep-missing)
    skipped: list[ErrorRecord] = field(default_factory=list)  # could not decode
    not_images: int = 0  # files without an image extension
    missing: list[str] = field(default_factory=list)  # given paths that do not exist
    seconds: float = 0.0

    def reasons(self) -> dict[str, int]:
        """Skips counted by the leading part of their reason (before any ':')."""
        counts: dict[str, int] = {}
        for record in self.skipped:
            key = record.reason.split(":", 1)[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def to_dict(self) -> dict[str, object]:
        return {
            "indexed": self.indexed,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "removed": self.removed,
            "kept_missing": self.kept_missing,
            "skipped": len(self.skipped),
            "skipped_reasons": self.reasons(),
            "not_images": self.not_images,
            "missing": self.missing,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TextFeatures:
    """Texts as the two stages need them."""

    vectors: "np.ndarray"  # (B, D) float32 unit vectors: stage 1
    tokens: list[torch.Tensor]  # B × (T_i, D) float32 token states through EOT: stage 2
    ids: list[torch.Tensor]  # B × (T_i,) int64 the tokenizer's ids of those tokens
    hidden: list[torch.Tensor] | None = None  # B × (T_i, W) the tower's states before its final
    # norm, in the model's dtype and place: what a CoCa decoder reads (None for other towers)


@dataclass(frozen=True)
class ImageFeatures:
    """Images as the two stages need them."""

    vectors: "np.ndarray"  # (B, D) float32 unit vectors: stage 1
    regions: torch.Tensor | None  # (B, R, D) float32 region states on a grid: stage 2


@dataclass(frozen=True)
class MatchResult:
    """One ranked text for an image. ``id`` is the collection's id (None for an ad-hoc label)."""

    rank: int
    id: int | None
    text: str
    score: float
    stage1_score: float
    stage1_rank: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class MatchResponse:
    image: str
    results: list[MatchResult]
    reranked: bool
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class AttentionMap:
    """Where the fusion scorer looked in one image for each token of a text.

    ``weights[t][r]``: token ``t``'s cross-attention to region ``r`` (mean over layers and
    heads; each row sums to 1, or less where the rest went to tokens before the grid, as
    CoCa's class token). Regions are a ``grid`` × ``grid`` square, row-major, over
    the part of the image the model sees: ``crop`` = (x0, y0, x1, y1) as fractions of the
    upright image's width and height."""

    image_id: int
    text: str
    tokens: list[str]  # T, start and end-of-text tokens included
    weights: list[list[float]]  # T × R
    grid: int
    crop: tuple[float, float, float, float]
    stage1_score: float
    match_logit: float
    score: float  # stage1_score + w · match_logit
    reranks: bool  # w != 0: the scorer changes the order of results

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TextRecord:
    text: str
    key: str | None = None  # the caller's own id
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextRow:
    """A text of the index's collection."""

    id: int
    text: str
    key: str | None
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "key": self.key, "meta": self.meta}


@dataclass(frozen=True)
class RerankerSummary:
    """Which stage-2 scorer an index uses, as the manifest records it: a fusion scorer and
    what ``reranker.pt`` was trained on, or (``scorer="coca-decoder"``) the pretrained
    text decoder of the index's CoCa model, which needs no training."""

    config: dict[str, Any]  # the scorer's FusionConfig, or the decoder's DecoderConfig
    scorer: str = "fusion"  # "fusion" or "coca-decoder"
    pairs: int = 0  # captions trained on
    best_epoch: int = 0
    negatives: int = 0
    val: dict[str, float] = field(default_factory=dict)  # validation figures of the best epoch
    trained_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RerankerSummary | None":
        """None for an index whose fusion scorer was never trained (an empty mapping)."""
        if not data:
            return None
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{"config": {}, **known})


@dataclass(frozen=True)
class IndexInfo:
    """What an index holds (``vtsearch info``)."""

    path: str
    images: int
    errors: int
    ann_vectors: int
    encoder: EncoderSpec
    embed_dim: int
    preprocess: dict[str, Any]
    ann: AnnConfig
    regions: RegionLayout | None  # None: the encoder has no region tokens
    reranker: RerankerSummary | None  # None: untrained (stage-1 order)
    schema_version: int
    vtsearch_version: str
    created: float
    updated: float
    encoder_probe: list[float] | None = None
    texts: int = 0  # the text collection (vtsearch match)
    catalog: str = ""  # the SQLite file, or the server's URL without its password
    kept_reads: dict[str, Any] | None = None  # the images as the trained scorer reads them: file, bytes, rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "catalog": self.catalog,
            "images": self.images,
            "errors": self.errors,
            "ann_vectors": self.ann_vectors,
            "texts": self.texts,
            "encoder": {**self.encoder.to_dict(), "embed_dim": self.embed_dim,
                        "preprocess": self.preprocess, "probe": self.encoder_probe},
            "ann": self.ann.to_dict(),
            "regions": self.regions.to_dict() if self.regions else None,
            "reranker": self.reranker.to_dict() if self.reranker else {},
            "kept_reads": self.kept_reads,
            "schema_version": self.schema_version,
            "vtsearch_version": self.vtsearch_version,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class RemoveSummary:
    removed: list[str]  # paths removed from the index
    not_indexed: list[str]  # given paths with nothing indexed at or under them

    def to_dict(self) -> dict[str, Any]:
        return {"removed": len(self.removed), "paths": self.removed, "not_indexed": self.not_indexed}


@dataclass(frozen=True)
class TextsSummary:
    added: int
    duplicates: int  # already in the collection, or repeated in the input
    longer_than_context: int  # matched on their first tokens only

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates,
                "longer_than_context": self.longer_than_context}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a byte of a file name that is not UTF-8 (os.fsdecode)


def json_text(data: Any, **dumps: Any) -> str:
    """``data`` as JSON that encodes to UTF-8, for the CLI and the HTTP API alike: a path's
    undecodable bytes become the ``\\udcNN`` escapes JSON allows (``json.loads`` gives the
    ``str`` back, ``os.fsencode`` its bytes). ``dumps``: more of json.dumps' options."""
    text = json.dumps(data, ensure_ascii=False, **dumps)
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", text)
