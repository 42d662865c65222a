"""The catalog: the index's source of truth, through SQLAlchemy 2 Core.

SQLite (``DIR/catalog.sqlite``) is the embedded default; PostgreSQL serves catalogs that
several hosts write to or that outgrow one file (``postgresql+psycopg://`` URLs, the
``postgres`` extra). The same tables and queries serve both; the differences are kept in
this package: SQLite's pragmas and quick check (:mod:`.connect`, here), PostgreSQL's
byte-order collation and 64-bit ids (:mod:`.schema`), GLOB turned into a regular
expression (:mod:`.filters`), URLs and the advisory lock (:mod:`.server`).

:class:`Catalog` is composed of parts, one per concern: revisions (:mod:`.meta`), image
reads and region rows (:mod:`.images`), image writes (:mod:`.writes`), search filters
(:mod:`.filters`) and the text collection (:mod:`.texts`). Opening a catalog creates or
checks its schema, upgrading an older one in place (:mod:`.migrations`).
"""

from __future__ import annotations

import os

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from ...records import ImageRow
from .connect import connect
from .filters import FilterQueries, glob_regex
from .guard import guard_public_methods
from .images import CatalogEntry, ImageReads, RegionRows
from .meta import TEXTS_REVISION, Revisions
from .migrations import ensure_schema
from .schema import ERROR, INDEXED, SCHEMA_VERSION, images_table, meta_table, metadata, texts_table
from .server import PASSWORD_VARIABLE, ServerLock, is_url, public_url, server_url
from .texts import TextCollection
from .writes import ImageWrites

__all__ = [
    "Catalog", "CatalogEntry", "ImageRow", "INDEXED", "ERROR", "SCHEMA_VERSION", "TEXTS_REVISION",
    "PASSWORD_VARIABLE", "ServerLock", "is_url", "public_url", "server_url", "glob_regex",
    "metadata", "meta_table", "images_table", "texts_table",
]


@guard_public_methods
class Catalog(Revisions, ImageReads, RegionRows, ImageWrites, FilterQueries, TextCollection):
    """Rows of images and their embeddings, and the text collection, in SQLite or on a
    PostgreSQL server.

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
        (``create``: make its tables when missing); a catalog of an older schema is
        upgraded in place. A URL without a password takes it from
        ``VTSEARCH_CATALOG_PASSWORD``, or libpq's own ``PGPASSWORD`` / ``~/.pgpass``."""
        shown, engine = connect(location, create)
        catalog = cls(shown, engine)
        ensure_schema(engine, shown, create)
        return catalog

    def writer_lock(self) -> ServerLock | None:
        """The server-side half of the writer lock (None for a SQLite file)."""
        return ServerLock(self.engine) if self.on_server else None

    def is_empty(self) -> bool:
        """No images and no texts: a new catalog, or one left by a create that died."""
        return self.count() == 0 and self.text_count() == 0

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

    def close(self) -> None:
        self.engine.dispose()
