"""Server catalogs: PostgreSQL URLs, their passwords, and the writer's advisory lock.

A URL without a password takes it from ``VTSEARCH_CATALOG_PASSWORD`` (or libpq's own
``PGPASSWORD`` / ``~/.pgpass``); the password is never stored, and messages and the
manifest show the URL without it (:func:`public_url`).
"""

from __future__ import annotations

import os

from sqlalchemy import func, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from ...errors import VtsearchError

PASSWORD_VARIABLE = "VTSEARCH_CATALOG_PASSWORD"  # a server catalog's password, never stored
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

    def forget(self) -> None:
        """In a forked child: point the child's copy of the lock connection's socket at
        /dev/null, so that the server sees the connection end when the writer dies (the
        child never uses it; the writer's own copy is untouched)."""
        if self._connection is None:
            return
        try:
            socket = self._connection.connection.dbapi_connection.fileno()
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            os.dup2(null, socket)
            os.close(null)
        except Exception:  # noqa: BLE001 - a fork hook must not fail; nothing to let go of then
            pass
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
