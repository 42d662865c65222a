"""Reading the image rows: entries for the ingest, rows and vectors for the query path,
region locations for the reranker, and the counts and layouts checks need.

One row per image file: its path, stat, content hash, size in pixels, status
(``indexed`` or ``error``), the reason for an error, and the global embedding (float32
bytes). The FAISS index is derived from the rows with an embedding; its ids are the
rows' primary keys, which SQLite's AUTOINCREMENT never reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ...records import ErrorRecord, ImageRow
from .filters import at_or_under
from .meta import REGIONS_FILE, meta_query
from .schema import ERROR, INDEXED, chunks, images_table, storable_ids

_ENTRY_COLUMNS = (images_table.c.path, images_table.c.id, images_table.c.size, images_table.c.mtime_ns,
                  images_table.c.content_hash, images_table.c.status)


@dataclass(frozen=True)
class CatalogEntry:
    """What the ingest needs to know about a path already in the catalog."""

    id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str


class ImageReads:
    """Queries on the image rows (a :class:`Catalog` part)."""

    engine: Engine

    def entries(self, paths: Sequence[str]) -> dict[str, CatalogEntry]:
        """Catalog entries for the given paths (absent paths are left out)."""
        found: dict[str, CatalogEntry] = {}
        with self.engine.connect() as connection:
            for chunk in chunks(paths):
                rows = connection.execute(select(*_ENTRY_COLUMNS).where(images_table.c.path.in_(chunk)))
                for path, *rest in rows:
                    found[path] = CatalogEntry(*rest)
        return found

    def under(self, root: str) -> dict[str, CatalogEntry]:
        """Entries whose path is ``root`` or lies below the folder ``root`` (a range
        query on the path index, fast on large catalogs)."""
        query = select(*_ENTRY_COLUMNS).where(at_or_under(root))
        with self.engine.connect() as connection:
            return {row_path: CatalogEntry(*rest) for row_path, *rest in connection.execute(query)}

    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        columns = (images_table.c.path, images_table.c.width, images_table.c.height, images_table.c.format,
                   images_table.c.status, images_table.c.size, images_table.c.mtime_ns)
        return {row_id: ImageRow(row_id, *rest) for row_id, rest in self._by_id(ids, *columns).items()}

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Stored embeddings for ids, in order ((n, dim) float32; zeros where absent)."""
        found = self._by_id(ids, images_table.c.embedding)
        result = np.zeros((len(ids), dim), dtype=np.float32)
        for position, image_id in enumerate(ids):
            blob = found.get(image_id, (None,))[0]
            if blob:
                result[position] = np.frombuffer(blob, dtype=np.float32)
        return result

    def embeddings(self, dim: int, chunk_size: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored embeddings as (ids int64 (n,), vectors float32 (n, dim)) chunks."""
        query = (select(images_table.c.id, images_table.c.embedding)
                 .where(images_table.c.embedding.is_not(None)).order_by(images_table.c.id))
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True).execute(query)
            while rows := result.fetchmany(chunk_size):
                ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
                vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
                yield ids, vectors.reshape(len(rows), dim)

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (int64, ascending)."""
        query = select(images_table.c.id).where(images_table.c.status == INDEXED).order_by(images_table.c.id)
        with self.engine.connect() as connection:
            return np.fromiter(connection.scalars(query), dtype=np.int64)

    def count(self, status: str | None = None) -> int:
        query = select(func.count()).select_from(images_table)
        if status is not None:
            query = query.where(images_table.c.status == status)
        with self.engine.connect() as connection:
            return int(connection.scalar(query) or 0)

    def errors(self) -> list[ErrorRecord]:
        query = (select(images_table.c.path, images_table.c.error)
                 .where(images_table.c.status == ERROR).order_by(images_table.c.path))
        with self.engine.connect() as connection:
            return [ErrorRecord(path, reason or "") for path, reason in connection.execute(query)]

    def indexed_layout(self) -> Iterator[tuple[int, int, int | None]]:
        """(id, embedding bytes, region row) of every indexed row, for integrity checks."""
        query = (select(images_table.c.id, func.length(images_table.c.embedding), images_table.c.region_row)
                 .where(images_table.c.status == INDEXED).order_by(images_table.c.id))
        with self.engine.connect() as connection:
            for row_id, length, region_row in connection.execute(query):
                yield int(row_id), int(length or 0), region_row

    def _by_id(self, ids: Sequence[int], *columns) -> dict[int, tuple]:
        """{id: (columns...)} for the ids present, queried in chunks (an id past the 64-bit
        range the column holds is simply not present)."""
        found: dict[int, tuple] = {}
        with self.engine.connect() as connection:
            for chunk in chunks(storable_ids(ids)):
                query = select(images_table.c.id, *columns).where(images_table.c.id.in_(chunk))
                found.update({row_id: tuple(rest) for row_id, *rest in connection.execute(query)})
        return found


class RegionRows:
    """Where each image's region vectors lie in the region store (a :class:`Catalog` part)."""

    engine: Engine

    def regions_file(self, default: str) -> str:
        """The region store's file name (compaction writes a new file under a new name)."""
        with self.engine.connect() as connection:
            return connection.scalar(meta_query(REGIONS_FILE)) or default

    def region_locations(self, ids: Sequence[int], default: str) -> tuple[str, dict[int, int | None]]:
        """(region file name, {id: row}) as of one moment.

        Each statement reads the rows together with the file name, so a compaction that
        commits in between is noticed (the names differ) and the read is repeated.
        """
        if not ids:
            return self.regions_file(default), {}
        name_column = meta_query(REGIONS_FILE).scalar_subquery().label("regions_file")
        while True:
            names: set[str] = set()
            found: dict[int, int | None] = {}
            with self.engine.connect() as connection:
                for chunk in chunks(list(ids)):
                    query = (select(images_table.c.id, images_table.c.region_row, name_column)
                             .where(images_table.c.id.in_(chunk)))
                    rows = connection.execute(query).all()
                    names.update(name or default for _id, _row, name in rows)
                    found.update({row_id: region_row for row_id, region_row, _name in rows})
            if len(names) == 1:
                return names.pop(), found
            if not names:  # none of the ids is in the catalog
                return self.regions_file(default), found

    def count_region_rows(self) -> int:
        """How many rows point at the region store."""
        query = select(func.count()).select_from(images_table).where(images_table.c.region_row.is_not(None))
        with self.engine.connect() as connection:
            return int(connection.scalar(query) or 0)

    def live_region_rows(self) -> list[tuple[int, int]]:
        """(id, region row) of every row that points at the region store, by row."""
        query = (select(images_table.c.id, images_table.c.region_row)
                 .where(images_table.c.region_row.is_not(None)).order_by(images_table.c.region_row))
        with self.engine.connect() as connection:
            return [(int(row_id), int(row)) for row_id, row in connection.execute(query)]
