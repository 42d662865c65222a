"""The text collection (image → text matching): deduplicated texts with their
embeddings, the caller's key and metadata, and a revision of their own."""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ...records import TextRow
from .meta import TEXTS_REVISION, bump_revision
from .schema import chunks, storable_ids, texts_table

_ROW_COLUMNS = (texts_table.c.id, texts_table.c.text, texts_table.c.key, texts_table.c.meta)


class TextCollection:
    """The ``texts`` table (a :class:`Catalog` part)."""

    engine: Engine

    def add_texts(self, records: Sequence[Any], embeddings: np.ndarray) -> list[int]:
        """Insert texts not already in the collection; returns the new ids (duplicates of
        stored texts, and repeats within ``records``, are left out)."""
        known = set(self._existing_texts([record.text for record in records]))
        rows, seen = [], set()
        for record, vector in zip(records, embeddings):
            if record.text in known or record.text in seen:
                continue
            seen.add(record.text)
            rows.append({"text": record.text, "key": record.key,
                         "meta": json.dumps(record.meta, ensure_ascii=False) if record.meta else None,
                         "embedding": np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
                         "added_at": time.time()})
        if not rows:
            return []
        with self.engine.begin() as connection:
            bump_revision(connection, TEXTS_REVISION)
            inserted = connection.execute(
                texts_table.insert().returning(texts_table.c.id, sort_by_parameter_order=True), rows)
            return [row_id for (row_id,) in inserted]

    def text_rows(self, ids: Sequence[int] | None = None, limit: int | None = None,
                  offset: int = 0) -> list[TextRow]:
        """Texts by id (in that order), or all of them by id (``limit``/``offset`` page them)."""
        with self.engine.connect() as connection:
            if ids is None:
                query = select(*_ROW_COLUMNS).order_by(texts_table.c.id).offset(offset)
                rows = connection.execute(query.limit(limit) if limit is not None else query).all()
            else:
                found = []
                for chunk in chunks(storable_ids(ids)):
                    found.extend(connection.execute(select(*_ROW_COLUMNS).where(texts_table.c.id.in_(chunk))))
                by_id = {row[0]: row for row in found}
                rows = [by_id[i] for i in ids if i in by_id]
        return [TextRow(row_id, text, key, json.loads(meta) if meta else {})
                for row_id, text, key, meta in rows]

    def text_embeddings(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of the whole collection."""
        query = select(texts_table.c.id, texts_table.c.embedding).order_by(texts_table.c.id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vectors

    def text_count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(texts_table)) or 0)

    def remove_texts(self, ids: Sequence[int] = (), texts: Sequence[str] = (),
                     keys: Sequence[str] = ()) -> int:
        """Delete texts by id, by exact text or by key; returns how many went."""
        removed = 0
        with self.engine.begin() as connection:
            bump_revision(connection, TEXTS_REVISION)
            columns = ((texts_table.c.id, storable_ids(ids)), (texts_table.c.text, texts), (texts_table.c.key, keys))
            for column, values in columns:
                for chunk in chunks(list(values)):
                    removed += connection.execute(texts_table.delete().where(column.in_(chunk))).rowcount
        return removed

    def _existing_texts(self, texts: Sequence[str]) -> list[str]:
        found: list[str] = []
        with self.engine.connect() as connection:
            for chunk in chunks(list(texts)):
                query = select(texts_table.c.text).where(texts_table.c.text.in_(chunk))
                found.extend(connection.scalars(query))
        return found
