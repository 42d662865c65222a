"""Engines for the two backends: a SQLite file with its pragmas, or a PostgreSQL server."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from ...errors import IndexFormatError
from .server import is_url, public_url, server_url


def connect(location: str | os.PathLike[str], create: bool) -> tuple[str, Engine]:
    """(the location as messages show it, an engine) for a SQLite path or a server URL;
    a missing SQLite file is an error unless ``create``."""
    if isinstance(location, str) and is_url(location):
        # pre-ping: a server restart between two queries costs a reconnect, not an error
        return public_url(location), create_engine(server_url(location), pool_pre_ping=True)
    path = Path(location)
    if not create and not path.is_file():
        raise IndexFormatError(f"catalog {path} is missing")
    # pooled connections: a query must not pay for opening SQLite and its pragmas
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _sqlite_pragmas)
    return str(path), engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # a new catalog gets 8 KB pages: three 2 KB embedding rows per page instead of one per
    # 4 KB page (a no-op on an existing file, whose page size is fixed)
    cursor.execute("PRAGMA page_size=8192")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers keep working while we write
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
