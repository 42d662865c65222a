"""Where the reranker gets a shortlist's regions: the region store, or, for a
``--no-regions`` index, the image files, decoded and encoded at query time."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from ..config import RegionLayout
from ..decode import decode_file
from ..encoder import Encoder
from ..errors import NeedsRepairError
from ..records import DecodedImage, ScannedFile
from ..store.catalog import Catalog
from ..store.regions import REGIONS_FILE, RegionStore


class RegionSource(Protocol):
    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        """(n, R, D) float32 region features for catalog ids, in order."""


class StoredRegions:
    """Regions read from the memory-mapped store (following it when it is compacted)."""

    def __init__(self, store: RegionStore, catalog: Catalog):
        self.store = store
        self.catalog = catalog

    def locate(self, ids: Sequence[int]) -> tuple[str, list[int]]:
        """The region file's name and the row of each id in it, as of one moment."""
        name, rows = self.catalog.region_locations(ids, default=REGIONS_FILE)
        missing = [image_id for image_id in ids if rows.get(image_id) is None]
        if missing:
            raise NeedsRepairError(f"{len(missing)} images have no stored regions (e.g. id {missing[0]})")
        return name, [rows[image_id] for image_id in ids]

    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        name, rows = self.locate(ids)
        if name != self.store.path.name:  # compacted since this reader looked
            self.store = RegionStore(self.store.path.with_name(name), self.store.layout)
        try:
            values = self.store.read(rows)
        except FileNotFoundError:  # compacted between the lookup and the read: look again
            return self.regions(ids)
        return torch.from_numpy(values.astype(np.float32))


class ComputedRegions:
    """Regions computed from the image files when the index does not store them."""

    def __init__(self, encoder: Encoder, catalog: Catalog, layout: RegionLayout, batch_size: int = 32):
        self.encoder = encoder
        self.catalog = catalog
        self.layout = layout
        self.batch_size = batch_size
        self.config = encoder.decode_config()

    def regions(self, ids: Sequence[int]) -> torch.Tensor:
        rows = self.catalog.rows(ids)
        result = torch.zeros(len(ids), self.layout.regions, self.layout.dim)
        for start in range(0, len(ids), self.batch_size):
            chunk = list(ids[start:start + self.batch_size])
            pixels, places = [], []
            for offset, image_id in enumerate(chunk):
                outcome = decode_file(ScannedFile(rows[image_id].path, 0, 0), self.config, self.encoder.preprocess)
                if isinstance(outcome, DecodedImage):  # a vanished file keeps zero regions
                    pixels.append(outcome.pixels)
                    places.append(start + offset)
            if pixels:
                features = self.encoder.encode_image_features(torch.stack(pixels), self.layout)
                result[places] = features.regions
        return result
