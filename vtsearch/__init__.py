"""vtsearch: search image collections by text or by example.

Stage 1 recalls candidates with an open_clip dual encoder and FAISS; the catalog lives
in SQLite. The public surface is small::

    from vtsearch import Index, EncoderSpec
    index = Index.create("indexes/photos", EncoderSpec("ViT-B-32", "laion2b_s34b_b79k"))
    index.add(["~/Pictures"])
    for hit in index.search("a red bicycle", k=5):
        print(hit.rank, hit.score, hit.path)

``Index`` is imported on first use: it brings in torch, open_clip and FAISS, which
``vtsearch --help`` and the light records below do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import AnnConfig, EncoderSpec, IngestOptions
from .errors import (
    IndexExistsError, IndexFormatError, IndexLockedError, IndexNotFoundError, ModelLoadError, ModelMismatchError,
    QueryError, VtsearchError,
)
from .filters import SearchFilter
from .records import ErrorRecord, IndexInfo, IngestSummary, SearchResult
from .version import __version__

if TYPE_CHECKING:
    from .index import Index

_LAZY = {"Index": "index"}  # brings in torch, open_clip and FAISS: imported on first use

__all__ = [
    "__version__",
    "Index", "IndexInfo", "EncoderSpec", "AnnConfig", "IngestOptions", "SearchFilter",
    "SearchResult", "IngestSummary", "ErrorRecord",
    "VtsearchError", "ModelLoadError", "IndexNotFoundError", "IndexExistsError",
    "IndexLockedError", "ModelMismatchError", "IndexFormatError", "QueryError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
