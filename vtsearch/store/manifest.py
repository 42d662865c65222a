"""``manifest.json``: what an index is made of, enough to reproduce a search."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import AnnConfig, EncoderSpec, RegionLayout
from ..errors import IndexFormatError
from ..records import RerankerSummary
from ..version import __version__
from .atomic import write_bytes_atomic
from .layout import file_identity

MANIFEST_VERSION = 1


@dataclass
class Manifest:
    encoder: EncoderSpec
    embed_dim: int
    preprocess: dict[str, Any]
    ann: AnnConfig = field(default_factory=AnnConfig)
    regions: RegionLayout | None = None  # None: the encoder has no region tokens
    reranker: RerankerSummary | None = None  # what reranker.pt was trained on (None: untrained)
    encoder_probe: list[float] | None = None  # Encoder.probe_vector() at creation (None: older index)
    catalog: str | None = None  # a server catalog's URL, without its password (None: DIR/catalog.sqlite)
    schema_version: int = MANIFEST_VERSION
    vtsearch_version: str = __version__
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "vtsearch_version": self.vtsearch_version,
            "encoder": {**self.encoder.to_dict(), "embed_dim": self.embed_dim,
                        "preprocess": self.preprocess, "probe": self.encoder_probe},
            "ann": self.ann.to_dict(),
            "regions": self.regions.to_dict() if self.regions else None,
            "reranker": self.reranker.to_dict() if self.reranker else {},
            "catalog": self.catalog,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        version = int(data.get("schema_version", 0))
        if version > MANIFEST_VERSION:
            raise IndexFormatError(
                f"index manifest has schema version {version}, newer than this vtsearch "
                f"understands ({MANIFEST_VERSION}); upgrade vtsearch"
            )
        encoder = data["encoder"]
        return cls(
            encoder=EncoderSpec.from_dict(encoder),
            embed_dim=int(encoder["embed_dim"]),
            preprocess=dict(encoder.get("preprocess", {})),
            ann=AnnConfig.from_dict(data.get("ann", {})),
            regions=RegionLayout.from_dict(data["regions"]) if data.get("regions") else None,
            reranker=RerankerSummary.from_dict(dict(data.get("reranker") or {})),
            encoder_probe=[float(x) for x in encoder["probe"]] if encoder.get("probe") else None,
            catalog=str(data["catalog"]) if data.get("catalog") else None,
            schema_version=version,
            vtsearch_version=str(data.get("vtsearch_version", "")),
            created=float(data.get("created", 0.0)),
            updated=float(data.get("updated", 0.0)),
        )

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except FileNotFoundError:
            raise
        except IndexFormatError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise IndexFormatError(f"manifest {path} is damaged: {error}") from None

    def save(self, path: Path) -> None:
        self.updated = time.time()
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))


class ManifestFile:
    """``manifest.json`` as one process sees it: the last version read, and whether the
    file on disk has been replaced since (another process saved it)."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        self._identity = file_identity(path)

    def changed_on_disk(self) -> bool:
        return file_identity(self.path) != self._identity

    def reload(self) -> Manifest:
        self.manifest = Manifest.load(self.path)
        self._identity = file_identity(self.path)
        return self.manifest

    def save(self, manifest: Manifest | None = None) -> None:
        if manifest is not None:
            self.manifest = manifest
        self.manifest.save(self.path)
        self._identity = file_identity(self.path)
