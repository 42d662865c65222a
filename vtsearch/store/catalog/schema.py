"""The catalog's tables, the same on SQLite and PostgreSQL.

The differences between the backends are kept in the column types: 64-bit ids on
servers (on SQLite an INTEGER PRIMARY KEY is the 64-bit rowid already), and PostgreSQL's
byte-order ("C") collation on paths, so that folder range queries mean the same on both.
Paths are stored losslessly, whatever bytes name the file (:mod:`.paths`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text

from .paths import PathText

SCHEMA_VERSION = 3  # 2: the text collection's table is part of every catalog; 3: paths escaped (.paths)
INDEXED = "indexed"
ERROR = "error"
IN_CHUNK = 900  # ids or paths per IN (...): stays under SQLite's bound-parameter limit

Id = BigInteger().with_variant(Integer, "sqlite")
MIN_ID, MAX_ID = -2**63, 2**63 - 1  # what an id column holds on either backend

metadata = MetaData()

meta_table = Table(
    "meta", metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

images_table = Table(
    "images", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("path", PathText(), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("content_hash", String(32), index=True),
    Column("width", Integer),
    Column("height", Integer),
    Column("format", String(16)),
    Column("status", String(8), nullable=False, index=True),
    Column("error", Text),
    Column("embedding", LargeBinary),
    Column("region_row", BigInteger),  # row in the region store, when regions are stored
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=True,  # ids are FAISS ids: never reuse a deleted one
)

texts_table = Table(
    "texts", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("text", Text, nullable=False, unique=True),  # the collection is deduplicated
    Column("key", Text),  # the caller's own id
    Column("meta", Text),  # JSON object
    Column("embedding", LargeBinary, nullable=False),
    Column("added_at", Float, nullable=False),
    sqlite_autoincrement=True,
)


def storable_ids(ids: Iterable[int]) -> list[int]:
    """``ids`` without those no id column can hold (past 64 bits): no row has them, and the
    drivers refuse to bind them."""
    return [row_id for row_id in ids if MIN_ID <= row_id <= MAX_ID]


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    """``items`` in slices of ``size``: one IN (...) query each."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
