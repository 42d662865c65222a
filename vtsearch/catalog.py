"""The catalog: the index's source of truth, through SQLAlchemy 2 Core.

SQLite (``DIR/catalog.sqlite``) is the embedded default; PostgreSQL serves catalogs that
several hosts write to or that outgrow one file (``postgresql+psycopg://`` URLs, the
``postgres`` extra). The same tables and queries serve both; the differences are kept
here: SQLite's pragmas and quick check, PostgreSQL's byte-order ("C") collation on paths
so that folder range queries mean the same, 64-bit ids, and GLOB turned into a regular
expression.

One row per image file: its path, stat, content hash, size in pixels, status
(``indexed`` or ``error``), the reason for an error, and the global embedding (float32
bytes). The FAISS index is derived from the rows with an embedding; its ids are the
rows' primary keys, which SQLite's AUTOINCREMENT never reuses.

Every write transaction also bumps the ``revision`` in the ``meta`` table. The revision
the saved FAISS index reflects is recorded beside it (``ann_revision``) after the FAISS
file is in place, so an index that is behind the catalog — a run killed between a commit
and the FAISS save, say — is recognised even when its vector count happens to match.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import (
    BigInteger, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text, bindparam,
    cast, create_engine, event, func, select, update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from .errors import IndexFormatError, VtsearchError
from .filters import SearchFilter
from .records import DecodedImage, DecodeFailure, ErrorRecord
from .texts import TextRow

SCHEMA_VERSION = 1
INDEXED = "indexed"
ERROR = "error"
TEXTS_REVISION = "texts_revision"
_IN_CHUNK = 900  # stays under SQLite's bound-parameter limit
PASSWORD_VARIABLE = "VTSEARCH_CATALOG_PASSWORD"  # a server catalog's password, never stored

# 64-bit ids on servers; on SQLite an INTEGER PRIMARY KEY is the 64-bit rowid already
Id = BigInteger().with_variant(Integer, "sqlite")
# byte order on PostgreSQL, as SQLite compares: folder range queries depend on it
PathText = Text().with_variant(Text(collation="C"), "postgresql")

metadata = MetaData()

meta_table = Table(
    "meta", metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

images_table = Table(
    "images", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("path", PathText, nullable=False, unique=True),
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


@dataclass(frozen=True)
class CatalogEntry:
    """What the ingest needs to know about a path already in the catalog."""

    id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str


@dataclass(frozen=True)
class ImageRow:
    """An image as search results and the API show it."""

    id: int
    path: str
    width: int | None
    height: int | None
    format: str | None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # a new catalog gets 8 KB pages: three 2 KB embedding rows per page instead of one per
    # 4 KB page (a no-op on an existing file, whose page size is fixed)
    cursor.execute("PRAGMA page_size=8192")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers keep working while we write
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _guarded(method: Callable) -> Callable:
    """Turn a SQLite failure inside a catalog method into a message naming the file."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self: "Catalog", *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except DatabaseError as error:
                raise _catalog_error(self.location, error) from None
        return generator

    @functools.wraps(method)
    def wrapper(self: "Catalog", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except DatabaseError as error:
            raise _catalog_error(self.location, error) from None
    return wrapper


def _catalog_error(location: str, error: DatabaseError) -> VtsearchError:
    reason = str(getattr(error, "orig", None) or error).strip()
    if "locked" in reason or "busy" in reason:
        return VtsearchError(f"catalog {location} is busy ({reason}); try again when the other process is done")
    if isinstance(error, OperationalError) and is_url(location):
        return VtsearchError(f"catalog {location} cannot be reached ({reason})")
    return IndexFormatError(
        f"catalog {location} is damaged ({reason}); restore it from a backup, or index again into "
        "a new --index"
    )


def _guard_public_methods(cls: type) -> type:
    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("_") and name not in ("open", "close"):
            setattr(cls, name, _guarded(member))
    return cls


@_guard_public_methods
class Catalog:
    """Rows of images and their embeddings, in SQLite or on a PostgreSQL server.

    Every public method turns a database failure into a :class:`VtsearchError` that names
    the catalog: a damaged catalog is never mistaken for an empty one.
    """

    def __init__(self, location: str, engine: Engine):
        self.location = location  # a file path, or a server URL without its password
        self.engine = engine

    @property
    def on_server(self) -> bool:
        return self.engine.dialect.name != "sqlite"

    @classmethod
    def open(cls, location: str | os.PathLike[str], create: bool = False) -> "Catalog":
        """Open the catalog at a SQLite file path or a ``postgresql+psycopg://`` URL
        (``create``: make its tables when missing). A URL without a password takes it
        from ``VTSEARCH_CATALOG_PASSWORD``, or libpq's own ``PGPASSWORD`` / ``~/.pgpass``."""
        if isinstance(location, str) and is_url(location):
            url = server_url(location)
            # pre-ping: a server restart between two queries costs a reconnect, not an error
            engine = create_engine(url, pool_pre_ping=True)
            catalog = cls(public_url(location), engine)
        else:
            path = Path(location)
            if not create and not path.is_file():
                raise IndexFormatError(f"catalog {path} is missing")
            # pooled connections: a query must not pay for opening SQLite and its pragmas
            engine = create_engine(f"sqlite:///{path}")
            event.listen(engine, "connect", _sqlite_pragmas)
            catalog = cls(str(path), engine)
        catalog._ensure_schema(create)
        return catalog

    def _ensure_schema(self, create: bool) -> None:
        try:
            if create:
                metadata.create_all(self.engine)
                with self.engine.begin() as connection:
                    for key, value in (("schema_version", SCHEMA_VERSION), ("revision", 0), (TEXTS_REVISION, 0)):
                        _insert_meta_if_missing(connection, key, value)
            with self.engine.connect() as connection:
                version = connection.scalar(
                    select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                )
        except OperationalError as error:
            reason = str(error.orig if hasattr(error, "orig") else error).strip()
            if self.on_server and not _is_missing_table(error):
                raise VtsearchError(f"catalog {self.location} cannot be reached ({reason})") from None
            raise IndexFormatError(
                f"catalog {self.location} is damaged or not a vtsearch catalog ({reason})"
            ) from None
        except DatabaseError as error:
            raise IndexFormatError(
                f"catalog {self.location} is damaged or not a vtsearch catalog "
                f"({error.orig if hasattr(error, 'orig') else error})"
            ) from None
        if version is None:
            raise IndexFormatError(f"catalog {self.location} has no schema version")
        if int(version) > SCHEMA_VERSION:
            raise IndexFormatError(
                f"catalog {self.location} has schema version {version}, newer than this "
                f"vtsearch understands ({SCHEMA_VERSION}); upgrade vtsearch"
            )

    def writer_lock(self) -> "ServerLock | None":
        """The server-side half of the writer lock (None for a SQLite file)."""
        return ServerLock(self.engine) if self.on_server else None

    def is_empty(self) -> bool:
        """No images and no texts: a new catalog, or one left by a create that died."""
        return self.count() == 0 and self.text_count() == 0

    def close(self) -> None:
        self.engine.dispose()

    # revisions

    def revision(self) -> int:
        """How many write transactions the catalog has seen."""
        return self._meta_int("revision")

    def texts_revision(self) -> int:
        """How many writes the text collection has seen (the image revision ignores them)."""
        return self._meta_int(TEXTS_REVISION)

    def ann_revision(self) -> int:
        """The catalog revision the saved FAISS index reflects (-1: unknown)."""
        return self._meta_int("ann_revision", default=-1)

    def set_ann_revision(self, revision: int, config: dict[str, Any] | None = None) -> None:
        """Record which revision the saved FAISS file reflects, and its config (kind,
        calibrated search settings), in one transaction."""
        with self.engine.begin() as connection:
            _set_meta(connection, "ann_revision", revision)
            if config is not None:
                _set_meta(connection, "ann_config", json.dumps(config, sort_keys=True))

    def ann_config(self) -> dict[str, Any] | None:
        """The config of the saved FAISS file (None: recorded in the manifest only)."""
        with self.engine.connect() as connection:
            value = connection.scalar(select(meta_table.c.value).where(meta_table.c.key == "ann_config"))
        return json.loads(value) if value else None

    def _meta_int(self, key: str, default: int = 0) -> int:
        with self.engine.connect() as connection:
            value = connection.scalar(select(meta_table.c.value).where(meta_table.c.key == key))
        return default if value is None else int(value)

    def integrity_problems(self) -> list[str]:
        """SQLite's own quick check of the file (empty when sound); a server keeps its
        own pages sound, and is asked nothing."""
        if self.on_server:
            return []
        try:
            with self.engine.connect() as connection:
                rows = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check")]
        except (DatabaseError, OperationalError) as error:
            return [str(error.orig if hasattr(error, "orig") else error)]
        return [] if rows == ["ok"] else rows

    # reads

    def entries(self, paths: Sequence[str]) -> dict[str, CatalogEntry]:
        """Catalog entries for the given paths (absent paths are left out)."""
        columns = (images_table.c.path, images_table.c.id, images_table.c.size,
                   images_table.c.mtime_ns, images_table.c.content_hash, images_table.c.status)
        found: dict[str, CatalogEntry] = {}
        with self.engine.connect() as connection:
            for chunk in _chunks(paths, _IN_CHUNK):
                rows = connection.execute(select(*columns).where(images_table.c.path.in_(chunk)))
                for path, *rest in rows:
                    found[path] = CatalogEntry(*rest)
        return found

    def under(self, root: str) -> dict[str, CatalogEntry]:
        """Entries whose path is ``root`` or lies below the folder ``root`` (a range
        query on the path index, fast on large catalogs)."""
        columns = (images_table.c.path, images_table.c.id, images_table.c.size, images_table.c.mtime_ns,
                   images_table.c.content_hash, images_table.c.status)
        query = select(*columns).where(_at_or_under(root))
        with self.engine.connect() as connection:
            return {row_path: CatalogEntry(*rest) for row_path, *rest in connection.execute(query)}

    def filtered_ids(self, conditions: SearchFilter) -> np.ndarray:
        """Ids of the indexed rows that meet every condition (int64, ascending)."""
        table = images_table.c
        where = [table.status == INDEXED]
        if conditions.path_prefix:
            where.append(_at_or_under(conditions.path_prefix))
        if conditions.glob:
            pattern = conditions.glob if "/" in conditions.glob else "*/" + conditions.glob
            if self.on_server:
                where.append(table.path.regexp_match(glob_regex(pattern)))
            else:
                where.append(table.path.op("GLOB")(pattern))
        if conditions.formats:
            where.append(table.format.in_(conditions.formats))
        if conditions.min_width is not None:
            where.append(table.width >= conditions.min_width)
        if conditions.min_height is not None:
            where.append(table.height >= conditions.min_height)
        if conditions.modified_after is not None:
            where.append(table.mtime_ns >= int(conditions.modified_after * 1e9))
        if conditions.modified_before is not None:
            where.append(table.mtime_ns < int(conditions.modified_before * 1e9))
        query = select(table.id).where(*where).order_by(table.id)
        with self.engine.connect() as connection:
            return np.fromiter(connection.scalars(query), dtype=np.int64)

    def _by_id(self, ids: Sequence[int], *columns) -> dict[int, tuple]:
        """{id: (columns...)} for the ids present, queried in chunks."""
        found: dict[int, tuple] = {}
        with self.engine.connect() as connection:
            for chunk in _chunks(list(ids), _IN_CHUNK):
                query = select(images_table.c.id, *columns).where(images_table.c.id.in_(chunk))
                found.update({row_id: tuple(rest) for row_id, *rest in connection.execute(query)})
        return found

    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        columns = (images_table.c.path, images_table.c.width, images_table.c.height, images_table.c.format)
        return {row_id: ImageRow(row_id, *rest) for row_id, rest in self._by_id(ids, *columns).items()}

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

    def regions_file(self, default: str) -> str:
        """The region store's file name (compaction writes a new file under a new name)."""
        with self.engine.connect() as connection:
            return connection.scalar(_REGIONS_FILE_QUERY) or default

    def region_locations(self, ids: Sequence[int], default: str) -> tuple[str, dict[int, int | None]]:
        """(region file name, {id: row}) as of one moment.

        Each statement reads the rows together with the file name, so a compaction that
        commits in between is noticed (the names differ) and the read is repeated.
        """
        if not ids:
            return self.regions_file(default), {}
        name_column = _REGIONS_FILE_QUERY.scalar_subquery().label("regions_file")
        while True:
            names: set[str] = set()
            found: dict[int, int | None] = {}
            with self.engine.connect() as connection:
                for chunk in _chunks(list(ids), _IN_CHUNK):
                    query = (select(images_table.c.id, images_table.c.region_row, name_column)
                             .where(images_table.c.id.in_(chunk)))
                    rows = connection.execute(query).all()
                    names.update(name or default for _id, _row, name in rows)
                    found.update({row_id: region_row for row_id, region_row, _name in rows})
            if len(names) == 1:
                return names.pop(), found
            if not names:  # none of the ids is in the catalog
                return self.regions_file(default), found

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (int64, ascending)."""
        query = select(images_table.c.id).where(images_table.c.status == INDEXED).order_by(images_table.c.id)
        with self.engine.connect() as connection:
            return np.fromiter(connection.scalars(query), dtype=np.int64)

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

    def indexed_layout(self) -> Iterator[tuple[int, int, int | None]]:
        """(id, embedding bytes, region row) of every indexed row, for integrity checks."""
        query = (select(images_table.c.id, func.length(images_table.c.embedding), images_table.c.region_row)
                 .where(images_table.c.status == INDEXED).order_by(images_table.c.id))
        with self.engine.connect() as connection:
            for row_id, length, region_row in connection.execute(query):
                yield int(row_id), int(length or 0), region_row

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Stored embeddings for ids, in order ((n, dim) float32; zeros where absent)."""
        found = self._by_id(ids, images_table.c.embedding)
        result = np.zeros((len(ids), dim), dtype=np.float32)
        for position, image_id in enumerate(ids):
            blob = found.get(image_id, (None,))[0]
            if blob:
                result[position] = np.frombuffer(blob, dtype=np.float32)
        return result

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

    # writes (one writer at a time: the index lock guarantees it)

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
        new_rows, updates, failed_ids = [], [], []
        rows = region_rows if region_rows is not None else [None] * len(decoded)
        for image, vector, region_row in zip(decoded, embeddings, rows):
            values = {
                "path": image.source.path, "size": image.size, "mtime_ns": image.source.mtime_ns,
                "content_hash": image.content_hash, "width": image.width, "height": image.height,
                "format": image.format, "status": INDEXED, "error": None,
                "embedding": np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
                "region_row": region_row, "updated_at": now,
            }
            entry = known.get(image.source.path)
            if entry is None:
                new_rows.append(values)
            else:
                updates.append({"row_id": entry.id, **values})
        error_rows, error_updates = [], []
        for failure in failures:
            values = {
                "path": failure.source.path, "size": failure.source.size,
                "mtime_ns": failure.source.mtime_ns, "content_hash": failure.content_hash,
                "width": None, "height": None, "format": None, "status": ERROR,
                "error": failure.reason, "embedding": None, "region_row": None, "updated_at": now,
            }
            entry = known.get(failure.source.path)
            if entry is None:
                error_rows.append(values)
            else:
                error_updates.append({"row_id": entry.id, **values})
                if entry.status == INDEXED:
                    failed_ids.append(entry.id)

        ids_by_path: dict[str, int] = {}
        with self.engine.begin() as connection:
            _bump_revision(connection)
            if new_rows:
                inserted = connection.execute(
                    images_table.insert().returning(
                        images_table.c.id, images_table.c.path, sort_by_parameter_order=True
                    ),
                    new_rows,
                )
                ids_by_path.update({path: row_id for row_id, path in inserted})
            if error_rows:
                connection.execute(images_table.insert(), error_rows)
            by_id = update(images_table).where(images_table.c.id == bindparam("row_id"))
            if updates:
                connection.execute(by_id, updates)
                ids_by_path.update({row["path"]: row["row_id"] for row in updates})
            if error_updates:
                connection.execute(by_id, error_updates)
        ids = [ids_by_path[image.source.path] for image in decoded]
        return ids, failed_ids

    def touch(self, stats: Iterable[tuple[int, int, int]]) -> None:
        """Record a new (size, mtime_ns) for rows whose content did not change."""
        rows = [{"row_id": row_id, "size": size, "mtime_ns": mtime_ns}
                for row_id, size, mtime_ns in stats]
        if rows:
            with self.engine.begin() as connection:
                _bump_revision(connection)
                connection.execute(
                    update(images_table).where(images_table.c.id == bindparam("row_id")), rows
                )

    def move(self, moves: Iterable[tuple[int, str, int, int]]) -> None:
        """Give rows a new (path, size, mtime_ns): the same content found at a new path.

        The id, embedding and region row stay, so nothing is re-encoded and the FAISS
        index does not change.
        """
        rows = [{"row_id": row_id, "path": path, "size": size, "mtime_ns": mtime_ns, "updated_at": time.time()}
                for row_id, path, size, mtime_ns in moves]
        if rows:
            with self.engine.begin() as connection:
                _bump_revision(connection)
                connection.execute(
                    update(images_table).where(images_table.c.id == bindparam("row_id")), rows
                )

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Delete rows; returns the ids among them that were indexed (in FAISS)."""
        indexed: list[int] = []
        with self.engine.begin() as connection:
            _bump_revision(connection)
            for chunk in _chunks(list(ids), _IN_CHUNK):
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
            _bump_revision(connection)
            if updates:
                connection.execute(
                    update(images_table).where(images_table.c.id == bindparam("row_id")), updates
                )
            _set_meta(connection, "regions_file", file_name)

    # the text collection (image → text matching)

    def add_texts(self, records: Sequence[Any], embeddings: np.ndarray) -> list[int]:
        """Insert texts not already in the collection; returns the new ids (duplicates of
        stored texts, and repeats within ``records``, are left out)."""
        texts_table.create(self.engine, checkfirst=True)  # catalogs from before texts existed
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
            _bump_revision(connection, TEXTS_REVISION)
            inserted = connection.execute(
                texts_table.insert().returning(texts_table.c.id, sort_by_parameter_order=True), rows)
            return [row_id for (row_id,) in inserted]

    def _existing_texts(self, texts: Sequence[str]) -> list[str]:
        if not self._has_texts_table():
            return []
        found: list[str] = []
        with self.engine.connect() as connection:
            for chunk in _chunks(list(texts), _IN_CHUNK):
                found.extend(connection.scalars(select(texts_table.c.text).where(texts_table.c.text.in_(chunk))))
        return found

    def _has_texts_table(self) -> bool:
        with self.engine.connect() as connection:
            return self.engine.dialect.has_table(connection, "texts")

    def text_rows(self, ids: Sequence[int] | None = None, limit: int | None = None,
                  offset: int = 0) -> list[TextRow]:
        """Texts by id (in that order), or all of them by id (``limit``/``offset`` page them)."""
        if not self._has_texts_table():
            return []
        columns = (texts_table.c.id, texts_table.c.text, texts_table.c.key, texts_table.c.meta)
        with self.engine.connect() as connection:
            if ids is None:
                query = select(*columns).order_by(texts_table.c.id).offset(offset)
                rows = connection.execute(query.limit(limit) if limit is not None else query).all()
            else:
                rows = []
                for chunk in _chunks(list(ids), _IN_CHUNK):
                    rows.extend(connection.execute(select(*columns).where(texts_table.c.id.in_(chunk))))
                by_id = {row[0]: row for row in rows}
                rows = [by_id[i] for i in ids if i in by_id]
        return [TextRow(row_id, text, key, json.loads(meta) if meta else {}) for row_id, text, key, meta in rows]

    def text_embeddings(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of the whole collection."""
        if not self._has_texts_table():
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        with self.engine.connect() as connection:
            rows = connection.execute(select(texts_table.c.id, texts_table.c.embedding).order_by(texts_table.c.id)).all()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vectors

    def text_count(self) -> int:
        if not self._has_texts_table():
            return 0
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(texts_table)) or 0)

    def remove_texts(self, ids: Sequence[int] = (), texts: Sequence[str] = (), keys: Sequence[str] = ()) -> int:
        """Delete texts by id, by exact text or by key; returns how many went."""
        if not self._has_texts_table():
            return 0
        removed = 0
        with self.engine.begin() as connection:
            _bump_revision(connection, TEXTS_REVISION)
            for column, values in ((texts_table.c.id, ids), (texts_table.c.text, texts), (texts_table.c.key, keys)):
                for chunk in _chunks(list(values), _IN_CHUNK):
                    removed += connection.execute(texts_table.delete().where(column.in_(chunk))).rowcount
        return removed

    def mark_for_reencoding(self, ids: Sequence[int], reason: str) -> None:
        """Turn indexed rows into errors that the next ``index`` run re-encodes (same ids)."""
        with self.engine.begin() as connection:
            _bump_revision(connection)
            for chunk in _chunks(list(ids), _IN_CHUNK):
                connection.execute(
                    update(images_table).where(images_table.c.id.in_(chunk)).values(
                        status=ERROR, error=reason, embedding=None, region_row=None,
                        content_hash=None, updated_at=time.time(),
                    )
                )


def _at_or_under(root: str):
    """``path`` is ``root`` or lies below the folder ``root``: a range on the path index
    (``root/`` ≤ path < ``root0``, ``0`` being the character after ``/``)."""
    root = root.rstrip(os.sep) or os.sep
    prefix = root if root.endswith(os.sep) else root + os.sep
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    path = images_table.c.path
    return (path == root) | ((path >= prefix) & (path < upper))


_REGIONS_FILE_QUERY = select(meta_table.c.value).where(meta_table.c.key == "regions_file")


def _bump_revision(connection: Connection, key: str = "revision") -> None:
    """Add one to a revision in one statement: concurrent writers on a server each add
    theirs (the row lock orders them); none is lost to a read-then-write race."""
    bumped = connection.execute(
        update(meta_table).where(meta_table.c.key == key)
        .values(value=cast(cast(meta_table.c.value, BigInteger) + 1, Text))
    ).rowcount
    if not bumped:  # a catalog from before revisions were created with the schema
        connection.execute(meta_table.insert(), {"key": key, "value": "1"})


def _insert_meta_if_missing(connection: Connection, key: str, value: object) -> None:
    found = connection.scalar(select(meta_table.c.value).where(meta_table.c.key == key))
    if found is None:
        connection.execute(meta_table.insert(), {"key": key, "value": str(value)})


def _is_missing_table(error: OperationalError) -> bool:
    return "no such table" in str(error) or "does not exist" in str(error)


def _set_meta(connection: Connection, key: str, value: object) -> None:
    changed = connection.execute(
        update(meta_table).where(meta_table.c.key == key).values(value=str(value))
    ).rowcount
    if not changed:
        connection.execute(meta_table.insert(), {"key": key, "value": str(value)})


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# server catalogs

WRITER_LOCK_KEY = 0x7674_7365_6172_6368 >> 1  # "vtsearch", within a signed 64-bit key


class ServerLock:
    """A PostgreSQL session advisory lock, held on a connection of its own for as long as
    the writer runs; the server drops it when that connection ends (a killed writer)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection: Connection | None = None

    def try_acquire(self) -> bool:
        connection = self.engine.connect()
        if not connection.scalar(select(func.pg_try_advisory_lock(WRITER_LOCK_KEY))):
            connection.close()
            return False
        connection.commit()  # end the implicit transaction; the session lock stays
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.scalar(select(func.pg_advisory_unlock(WRITER_LOCK_KEY)))
        finally:
            self._connection.close()  # a lost connection has released it already
            self._connection = None

    def held_elsewhere(self) -> bool:
        if self._connection is not None:
            return False
        with self.engine.connect() as connection:
            if connection.scalar(select(func.pg_try_advisory_lock(WRITER_LOCK_KEY))):
                connection.scalar(select(func.pg_advisory_unlock(WRITER_LOCK_KEY)))
                return False
        return True


def is_url(location: str) -> bool:
    return "://" in location


def server_url(location: str) -> URL:
    """The URL to connect with: the password from the environment when the URL has none;
    only SQLite files and PostgreSQL servers are catalogs."""
    try:
        url = make_url(location)
    except ArgumentError:
        raise VtsearchError(f"catalog URL {location!r} is not a database URL") from None
    if url.get_backend_name() != "postgresql":
        raise VtsearchError(
            f"catalog URL {public_url(location)} names a {url.get_backend_name()} database; a "
            "catalog is a SQLite file (the default) or a postgresql+psycopg:// URL"
        )
    url = url.set(drivername="postgresql+psycopg")  # the one driver the postgres extra brings
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise VtsearchError(
            "a PostgreSQL catalog needs the psycopg driver: pip install 'vtsearch[postgres]'"
        ) from None
    if url.password is None and os.environ.get(PASSWORD_VARIABLE):
        url = url.set(password=os.environ[PASSWORD_VARIABLE])
    return url


def public_url(location: str) -> str:
    """``location`` without its password: what the manifest records and messages show."""
    try:
        return make_url(location)._replace(password=None).render_as_string(hide_password=False)
    except ArgumentError:
        return location


def glob_regex(pattern: str) -> str:
    """SQLite's GLOB pattern as a PostgreSQL regular expression (``*`` any run of
    characters, ``?`` one, ``[...]`` and ``[^...]`` a set; case matters)."""
    out, position = ["^"], 0
    while position < len(pattern):
        char = pattern[position]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (end := pattern.find("]", position + 2)) != -1:
            body = pattern[position + 1:end]
            negate = body[:1] == "^"
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            position = end
        else:
            out.append(char if char.isalnum() else "\\" + char)
        position += 1
    return "".join(out) + "$"
