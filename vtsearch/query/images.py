"""A query image, whatever form it comes in: a file, an upload's bytes, or an indexed
image named by id or path (whose stored vector is used: nothing is decoded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..decode import decode_query_bytes, decode_query_image
from ..errors import QueryError
from ..records import ImageRow
from ..store.catalog import INDEXED
from .context import QueryContext

QueryImage = str | int | bytes | os.PathLike  # a file, an upload's bytes, or an indexed image's id
MAX_ID = 2**63  # catalog ids are signed 64-bit integers

if TYPE_CHECKING:
    from ..encoder import Encoder


@dataclass(frozen=True)
class ResolvedImage:
    name: str  # its path, or "(upload)"
    vector: np.ndarray  # (D,) unit stage-1 vector
    image_id: int | None  # the catalog's id when the image is indexed
    pixels: torch.Tensor | None  # (3, H, W) the decoded image when it is not

    def regions(self, context: QueryContext) -> torch.Tensor:
        """(R, D) its regions: stored for an indexed image, else encoded from the pixels."""
        if self.image_id is not None:
            return context.load_region_source().regions([self.image_id])[0]
        return context.encoder.encode_image_features(self.pixels.unsqueeze(0), context.layout).regions[0]


def resolve_image(image: QueryImage, context: QueryContext) -> ResolvedImage:
    encoder = context.encoder
    if isinstance(image, (bytes, bytearray)):
        pixels = decode_query_bytes(bytes(image), "(upload)", encoder.decode_config(), encoder.preprocess)
        return ResolvedImage("(upload)", _encode(encoder, pixels), None, pixels)
    given = os.fspath(image) if not isinstance(image, int) else str(image)
    if isinstance(image, int) or (given.isdigit() and not os.path.exists(given)):
        row = indexed_row(int(given), context)
        return ResolvedImage(row.path, context.catalog.vectors([row.id], context.embed_dim)[0], row.id, None)
    path = os.path.abspath(os.path.expanduser(given))
    entry = context.catalog.entries([path]).get(path)
    if entry is not None and entry.status == INDEXED:
        return ResolvedImage(path, context.catalog.vectors([entry.id], context.embed_dim)[0], entry.id, None)
    pixels = decode_query_image(path, encoder.decode_config(), encoder.preprocess)
    return ResolvedImage(path, _encode(encoder, pixels), None, pixels)


def indexed_row(image_id: int, context: QueryContext) -> ImageRow:
    """The catalog row of an indexed image; a QueryError naming the id when there is none
    (ids past the catalog's 64-bit range included) or the file was skipped."""
    row = context.catalog.rows([image_id]).get(image_id) if 0 <= image_id < MAX_ID else None
    if row is None:
        raise QueryError(f"no indexed image has id {image_id}")
    if row.status != INDEXED:
        raise QueryError(f"image {image_id} ({row.path}) was skipped when it was indexed: "
                         "it has no vector or regions to query with")
    return row


def _encode(encoder: "Encoder", pixels: torch.Tensor) -> np.ndarray:
    return encoder.encode_images(pixels.unsqueeze(0))[0]
