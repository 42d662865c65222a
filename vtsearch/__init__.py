"""vtsearch: search image collections by text or by example.

Stage 1 recalls candidates with an open_clip dual encoder and FAISS; the catalog lives
in SQLite. The public surface is small::

    from vtsearch import Index, EncoderSpec
    index = Index.create("indexes/photos", EncoderSpec("ViT-B-32", "laion2b_s34b_b79k"))
    index.add(["~/Pictures"])
    for hit in index.search("a red bicycle", k=5):
        print(hit.rank, hit.score, hit.path)
"""

__version__ = "0.1.0"

from .config import AnnConfig, EncoderSpec, IngestOptions  # noqa: E402
from .errors import (  # noqa: E402
    IndexExistsError, IndexFormatError, IndexLockedError, IndexNotFoundError, ModelLoadError,
    ModelMismatchError, QueryError, VtsearchError,
)
from .filters import SearchFilter  # noqa: E402
from .index import Index, IndexInfo  # noqa: E402
from .records import ErrorRecord, IngestSummary, SearchResult  # noqa: E402

__all__ = [
    "__version__",
    "Index", "IndexInfo", "EncoderSpec", "AnnConfig", "IngestOptions", "SearchFilter",
    "SearchResult", "IngestSummary", "ErrorRecord",
    "VtsearchError", "ModelLoadError", "IndexNotFoundError", "IndexExistsError",
    "IndexLockedError", "ModelMismatchError", "IndexFormatError", "QueryError",
]
