"""The ``meta`` table: schema version, revisions, the saved FAISS index's config, the
region file's name.

Every write transaction bumps a revision: ``revision`` for images, ``texts_revision``
for the text collection. The revision the saved FAISS index reflects is recorded beside
it (``ann_revision``) after the FAISS file is in place, so an index that is behind the
catalog — a run killed between a commit and the FAISS save, say — is recognised even
when its vector count happens to match.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import BigInteger, Text, cast, select, update
from sqlalchemy.engine import Connection, Engine

from .schema import meta_table

SCHEMA_VERSION_KEY = "schema_version"
REVISION = "revision"
TEXTS_REVISION = "texts_revision"
ANN_REVISION = "ann_revision"
ANN_CONFIG = "ann_config"
REGIONS_FILE = "regions_file"


def meta_query(key: str):
    """SELECT the value stored under ``key`` (no row: None)."""
    return select(meta_table.c.value).where(meta_table.c.key == key)


def read_meta(connection: Connection, key: str) -> str | None:
    return connection.scalar(meta_query(key))


def set_meta(connection: Connection, key: str, value: object) -> None:
    changed = connection.execute(
        update(meta_table).where(meta_table.c.key == key).values(value=str(value))
    ).rowcount
    if not changed:
        connection.execute(meta_table.insert(), {"key": key, "value": str(value)})


def insert_meta_if_missing(connection: Connection, key: str, value: object) -> None:
    if read_meta(connection, key) is None:
        connection.execute(meta_table.insert(), {"key": key, "value": str(value)})


def bump_revision(connection: Connection, key: str = REVISION) -> None:
    """Add one to a revision in one statement: concurrent writers on a server each add
    theirs (the row lock orders them); none is lost to a read-then-write race."""
    bumped = connection.execute(
        update(meta_table).where(meta_table.c.key == key)
        .values(value=cast(cast(meta_table.c.value, BigInteger) + 1, Text))
    ).rowcount
    if not bumped:  # a catalog from before revisions were created with the schema
        connection.execute(meta_table.insert(), {"key": key, "value": "1"})


class Revisions:
    """The catalog's revisions and the saved FAISS index's record (a :class:`Catalog` part)."""

    engine: Engine

    def revision(self) -> int:
        """How many write transactions the catalog has seen."""
        return self._meta_int(REVISION)

    def texts_revision(self) -> int:
        """How many writes the text collection has seen (the image revision ignores them)."""
        return self._meta_int(TEXTS_REVISION)

    def ann_revision(self) -> int:
        """The catalog revision the saved FAISS index reflects (-1: unknown)."""
        return self._meta_int(ANN_REVISION, default=-1)

    def set_ann_revision(self, revision: int, config: dict[str, Any] | None = None) -> None:
        """Record which revision the saved FAISS file reflects, and its config (kind,
        calibrated search settings), in one transaction."""
        with self.engine.begin() as connection:
            set_meta(connection, ANN_REVISION, revision)
            if config is not None:
                set_meta(connection, ANN_CONFIG, json.dumps(config, sort_keys=True))

    def ann_config(self) -> dict[str, Any] | None:
        """The config of the saved FAISS file (None: recorded in the manifest only)."""
        with self.engine.connect() as connection:
            value = read_meta(connection, ANN_CONFIG)
        return json.loads(value) if value else None

    def _meta_int(self, key: str, default: int = 0) -> int:
        with self.engine.connect() as connection:
            value = read_meta(connection, key)
        return default if value is None else int(value)
