"""A :class:`SearchFilter` resolved in SQL: the ids a query may return.

Both backends answer the same: folder conditions are range queries on the path index
(byte order on both), and SQLite's GLOB becomes an anchored regular expression on
PostgreSQL. Patterns and folders are compared with the paths' stored form (:mod:`.paths`).

A pattern the database cannot take (too long or too complex for it, a set the regular
expression engine refuses) is the caller's input, not damage: a :class:`QueryError` that
names it. (:class:`SearchFilter` limits lengths before a query is made.)
"""

from __future__ import annotations

import os
import re

import numpy as np
from sqlalchemy import Text, func, literal, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError

from ...errors import QueryError
from ...filters import SearchFilter
from .guard import failure_reason
from .paths import stored_path
from .schema import INDEXED, images_table

# how each backend says that a pattern is more than it takes (SQLite: over 50,000 bytes)
PATTERN_REFUSALS = ("pattern too complex", "regular expression")


class FilterQueries:
    """Search filters over the image rows (a :class:`Catalog` part)."""

    engine: Engine
    on_server: bool

    def filtered_ids(self, conditions: SearchFilter) -> np.ndarray:
        """Ids of the indexed rows that meet every condition (int64, ascending)."""
        where = [images_table.c.status == INDEXED, *filter_conditions(conditions, self.on_server)]
        columns = (images_table.c.id, images_table.c.path) if conditions.glob else (images_table.c.id,)
        query = select(*columns).where(*where).order_by(images_table.c.id)
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
        except DatabaseError as error:
            reason = failure_reason(error)
            if conditions.glob is not None and any(words in reason for words in PATTERN_REFUSALS):
                raise QueryError(f"the glob pattern {_shown(conditions.glob)} cannot be used ({reason})") from None
            raise
        escaped = {row[0] for row in rows if "\\" in stored_path(row[1])} if conditions.glob else set()
        if escaped:  # a path stored with escapes is matched here, on its real name
            matches = _real_name_matcher(conditions.glob)
            rows = [row for row in rows if row[0] not in escaped or matches(row[1])]
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


def filter_conditions(conditions: SearchFilter, on_server: bool) -> list:
    """The WHERE clauses of ``conditions`` on the images table."""
    table = images_table.c
    where = []
    if conditions.path_prefix:
        where.append(at_or_under(conditions.path_prefix))
    if conditions.glob:
        pattern = _anchored(conditions.glob)
        if on_server:  # a regular expression over the stored form, bound as plain text
            matches = table.path.regexp_match(literal(glob_regex(stored_path(pattern)), Text))
        else:
            matches = table.path.op("GLOB")(pattern)  # the column's type stores the pattern as a path
        # a path stored with escapes (a name that is not UTF-8, a backslash) is let through
        # and matched in Python on its real name, which its stored form does not show
        escaped = (func.strpos if on_server else func.instr)(table.path, literal("\\", Text)) > 0
        where.append(or_(matches, escaped))
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
    return where


def _real_name_matcher(glob: str):
    """Whether a real path matches ``glob`` (a set Python refuses, as ``[z-a]``, matches
    nothing, as in SQLite)."""
    try:
        return re.compile(glob_regex(_anchored(glob)), re.DOTALL).match
    except re.error:
        return lambda _path: None


def _anchored(glob: str) -> str:
    """A pattern without ``/`` is matched against the file's name."""
    return glob if "/" in glob else "*/" + glob


def _shown(value: str, length: int = 40) -> str:
    """A long input named by its start."""
    return repr(value if len(value) <= length else value[:length] + "...")


def at_or_under(root: str):
    """``path`` is ``root`` or lies below the folder ``root``: a range on the path index
    (``root/`` ≤ path < ``root0``, ``0`` being the character after ``/``)."""
    root = root.rstrip(os.sep) or os.sep
    prefix = root if root.endswith(os.sep) else root + os.sep
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    path = images_table.c.path
    return (path == root) | ((path >= prefix) & (path < upper))


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
