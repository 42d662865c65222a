"""Writing the image rows, one transaction per call, each bumping the revision.

One writer at a time: the index's writer lock guarantees it.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Engine

from ...records import DecodedImage, DecodeFailure
from .images import CatalogEntry
from .meta import REGIONS_FILE, bump_revision, set_meta
from .schema import ERROR, INDEXED, chunks, images_table

_BY_ROW_ID = update(images_table).where(images_table.c.id == bindparam("row_id"))


class ImageWrites:
    """Inserts, updates and deletes of image rows (a :class:`Catalog` part)."""

    engine: Engine

    def store(
        self,
        decoded: Sequence[DecodedImage],
        embeddings: np.ndarray,
        failures: Sequence[DecodeFailure],
        known: dict[str, CatalogEntry],
        region_rows: Sequence[int] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Write one batch in one transaction.

        Returns (ids of ``decoded`` in order, ids that held an embedding and now failed).
        """
        now = time.time()
        batch = _Batch()
        rows = region_rows if region_rows is not None else [None] * len(decoded)
        for image, vector, region_row in zip(decoded, embeddings, rows):
            batch.add(known.get(image.source.path), _indexed_values(image, vector, region_row, now))
        for failure in failures:
            batch.add(known.get(failure.source.path), _error_values(failure, now))
        with self.engine.begin() as connection:
            bump_revision(connection)
            ids_by_path = batch.write(connection)
        return [ids_by_path[image.source.path] for image in decoded], batch.failed_ids

    def touch(self, stats: Iterable[tuple[int, int, int]]) -> None:
        """Record a new (size, mtime_ns) for rows whose content did not change."""
        self._update_rows([{"row_id": row_id, "size": size, "mtime_ns": mtime_ns}
                           for row_id, size, mtime_ns in stats])

    def move(self, moves: Iterable[tuple[int, str, int, int]]) -> None:
        """Give rows a new (path, size, mtime_ns): the same content found at a new path.

        The id, embedding and region row stay, so nothing is re-encoded and the FAISS
        index does not change.
        """
        self._update_rows([{"row_id": row_id, "path": path, "size": size, "mtime_ns": mtime_ns,
                            "updated_at": time.time()} for row_id, path, size, mtime_ns in moves])

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Delete rows; returns the ids among them that were indexed (in FAISS)."""
        indexed: list[int] = []
        with self.engine.begin() as connection:
            bump_revision(connection)
            for chunk in chunks(list(ids)):
                where = images_table.c.id.in_(chunk)
                indexed.extend(connection.scalars(
                    select(images_table.c.id).where(where & (images_table.c.status == INDEXED))
                ))
                connection.execute(images_table.delete().where(where))
        return indexed

    def relocate_regions(self, rows: dict[int, int], file_name: str) -> None:
        """Point rows at a compacted region file, in one transaction with its name."""
        updates = [{"row_id": row_id, "region_row": row} for row_id, row in rows.items()]
        with self.engine.begin() as connection:
            bump_revision(connection)
            if updates:
                connection.execute(_BY_ROW_ID, updates)
            set_meta(connection, REGIONS_FILE, file_name)

    def mark_for_reencoding(self, ids: Sequence[int], reason: str) -> None:
        """Turn indexed rows into errors that the next ``index`` run re-encodes (same ids)."""
        with self.engine.begin() as connection:
            bump_revision(connection)
            for chunk in chunks(list(ids)):
                connection.execute(
                    update(images_table).where(images_table.c.id.in_(chunk)).values(
                        status=ERROR, error=reason, embedding=None, region_row=None,
                        content_hash=None, updated_at=time.time(),
                    )
                )

    def _update_rows(self, rows: list[dict[str, Any]]) -> None:
        """Update rows by ``row_id`` in one transaction (nothing at all when none)."""
        if rows:
            with self.engine.begin() as connection:
                bump_revision(connection)
                connection.execute(_BY_ROW_ID, rows)


class _Batch:
    """One ``store`` call's rows, sorted into inserts and updates, images and errors."""

    def __init__(self) -> None:
        self.new_rows: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.error_rows: list[dict[str, Any]] = []
        self.error_updates: list[dict[str, Any]] = []
        self.failed_ids: list[int] = []  # rows that held an embedding and now failed

    def add(self, entry: CatalogEntry | None, values: dict[str, Any]) -> None:
        indexed = values["status"] == INDEXED
        if entry is None:
            (self.new_rows if indexed else self.error_rows).append(values)
            return
        (self.updates if indexed else self.error_updates).append({"row_id": entry.id, **values})
        if not indexed and entry.status == INDEXED:
            self.failed_ids.append(entry.id)

    def write(self, connection: Connection) -> dict[str, int]:
        """Execute the batch; returns {path: id} of the indexed rows."""
        ids_by_path: dict[str, int] = {}
        if self.new_rows:
            inserted = connection.execute(
                images_table.insert().returning(images_table.c.id, images_table.c.path,
                                                sort_by_parameter_order=True),
                self.new_rows,
            )
            ids_by_path.update({path: row_id for row_id, path in inserted})
        if self.error_rows:
            connection.execute(images_table.insert(), self.error_rows)
        if self.updates:
            connection.execute(_BY_ROW_ID, self.updates)
            ids_by_path.update({row["path"]: row["row_id"] for row in self.updates})
        if self.error_updates:
            connection.execute(_BY_ROW_ID, self.error_updates)
        return ids_by_path


def _indexed_values(image: DecodedImage, vector: np.ndarray, region_row: int | None,
                    now: float) -> dict[str, Any]:
    return {
        "path": image.source.path, "size": image.size, "mtime_ns": image.source.mtime_ns,
        "content_hash": image.content_hash, "width": image.width, "height": image.height,
        "format": image.format, "status": INDEXED, "error": None,
        "embedding": np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
        "region_row": region_row, "updated_at": now,
    }


def storable_text(text: str) -> str:
    """Free text (a reason) as a text column takes it: a lone surrogate (a file name's
    undecodable byte quoted in it) is written as its ``\\udcNN`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_values(failure: DecodeFailure, now: float) -> dict[str, Any]:
    return {
        "path": failure.source.path, "size": failure.source.size,
        "mtime_ns": failure.source.mtime_ns, "content_hash": failure.content_hash,
        "width": None, "height": None, "format": None, "status": ERROR,
        "error": storable_text(failure.reason), "embedding": None, "region_row": None, "updated_at": now,
    }

