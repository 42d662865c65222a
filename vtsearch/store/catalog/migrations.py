"""Creating a catalog's tables, and bringing an older catalog up to this schema in place.

A catalog records its schema version in ``meta``. One newer than :data:`SCHEMA_VERSION`
is refused (this vtsearch cannot know what it holds); an older one is upgraded when it is
opened, every step in one transaction with the new version, so a catalog is never left
half upgraded.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from ...errors import IndexFormatError, VtsearchError
from .guard import catalog_error, failure_reason
from .meta import REVISION, SCHEMA_VERSION_KEY, TEXTS_REVISION, insert_meta_if_missing, read_meta
from .paths import stored_path
from .schema import SCHEMA_VERSION, meta_table, metadata, texts_table


def _add_text_collection(connection: Connection) -> None:
    """1 → 2: the text collection's table (a catalog made while texts were new may have
    it already) and its revision."""
    metadata.create_all(connection, tables=[texts_table], checkfirst=True)
    insert_meta_if_missing(connection, TEXTS_REVISION, 0)


def _escape_backslashes(connection: Connection) -> None:
    """2 → 3: paths are stored escaped (:mod:`.paths`); before, a path was stored as it
    is, and only those holding a backslash change. They are first renamed to a
    placeholder each (no path starts with ``:``), so a new value never meets an old one
    under the unique constraint."""
    rows = connection.execute(text("SELECT id, path FROM images WHERE replace(path, :slash, '') <> path"),
                              {"slash": "\\"}).all()
    if not rows:
        return
    rename = text("UPDATE images SET path = :path WHERE id = :row_id")
    connection.execute(rename, [{"row_id": row_id, "path": f":{row_id}"} for row_id, _path in rows])
    connection.execute(rename, [{"row_id": row_id, "path": stored_path(path)} for row_id, path in rows])


UPGRADES: dict[int, Callable[[Connection], None]] = {  # from version n to n + 1
    1: _add_text_collection,
    2: _escape_backslashes,
}


def ensure_schema(engine: Engine, location: str, create: bool) -> None:
    """Check (``create``: first make) the catalog's tables; upgrade an older catalog."""
    version = _schema_version(engine, location, create)
    if version is None:
        raise IndexFormatError(f"catalog {location} has no schema version")
    if version > SCHEMA_VERSION:
        raise IndexFormatError(
            f"catalog {location} has schema version {version}, newer than this "
            f"vtsearch understands ({SCHEMA_VERSION}); upgrade vtsearch"
        )
    if version < SCHEMA_VERSION:
        upgrade(engine, location, version)


def create_schema(engine: Engine) -> None:
    """The tables and meta rows a catalog needs (those present are left as they are)."""
    metadata.create_all(engine)
    with engine.begin() as connection:
        for key, value in ((SCHEMA_VERSION_KEY, SCHEMA_VERSION), (REVISION, 0), (TEXTS_REVISION, 0)):
            insert_meta_if_missing(connection, key, value)


def upgrade(engine: Engine, location: str, version: int) -> None:
    """Run the upgrades from ``version`` on, in one transaction with the version bump."""
    try:
        with engine.begin() as connection:
            # the version row is written first: on SQLite that opens the write transaction
            # the table changes then join (the driver begins one only before DML), and a
            # second process opening the catalog waits for it, then finds nothing to do
            claimed = connection.execute(
                update(meta_table)
                .where(meta_table.c.key == SCHEMA_VERSION_KEY, meta_table.c.value == str(version))
                .values(value=str(SCHEMA_VERSION))
            ).rowcount
            if claimed:
                for step in range(version, SCHEMA_VERSION):
                    UPGRADES[step](connection)
    except DatabaseError as error:
        mapped = catalog_error(location, error)
        if not isinstance(mapped, IndexFormatError):  # busy or unreachable: try again later
            raise mapped from None
        raise IndexFormatError(
            f"catalog {location} has schema version {version} and could not be upgraded to "
            f"{SCHEMA_VERSION} in place ({failure_reason(error)}); open it once where it can be written"
        ) from None


def _schema_version(engine: Engine, location: str, create: bool) -> int | None:
    try:
        if create:
            create_schema(engine)
        with engine.connect() as connection:
            version = read_meta(connection, SCHEMA_VERSION_KEY)
    except OperationalError as error:
        if engine.dialect.name != "sqlite" and not _is_missing_table(error):
            raise VtsearchError(f"catalog {location} cannot be reached ({failure_reason(error)})") from None
        raise IndexFormatError(
            f"catalog {location} is damaged or not a vtsearch catalog ({failure_reason(error)})"
        ) from None
    except DatabaseError as error:
        raise IndexFormatError(
            f"catalog {location} is damaged or not a vtsearch catalog ({failure_reason(error)})"
        ) from None
    return None if version is None else int(version)


def _is_missing_table(error: OperationalError) -> bool:
    return "no such table" in str(error) or "does not exist" in str(error)
