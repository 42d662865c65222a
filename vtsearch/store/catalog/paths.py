"""File paths in the catalog, kept losslessly whatever bytes name the file.

A POSIX file name is bytes; Python hands it over as a ``str`` in which each byte that is
not UTF-8 is a lone surrogate (U+DC80..U+DCFF, ``os.fsdecode``'s surrogateescape), and
``os.fsencode`` turns that ``str`` back into the very bytes. SQLite's and PostgreSQL's text
columns refuse lone surrogates, so the ``path`` column stores a path's bytes as UTF-8
text in which every byte that is not part of valid UTF-8, and the backslash itself, is
written ``\\xNN`` (two lower-case hex digits): ``b'caf\\xe9.jpg'`` is kept as
``caf\\xe9.jpg``, ``b'a\\\\b.png'`` as ``a\\x5cb.png``. Every other path is kept as it is.

The escape is applied byte by byte and leaves ``/`` alone, so a folder's stored form is
a prefix of its files' (folder range queries still hold), and a glob pattern escaped the
same way matches the stored form of the names it matches (a ``?`` matches one stored
character, so it does not stand for an escaped byte).
"""

from __future__ import annotations

import re

from sqlalchemy.types import Text, TypeDecorator

_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def stored_path(path: str) -> str:
    """The text the catalog keeps for ``path`` (a ``str`` as ``os.fsdecode`` gives it)."""
    if "\\" not in path:
        try:
            path.encode("utf-8")
            return path  # valid UTF-8 and nothing to escape: the common case, kept as is
        except UnicodeEncodeError:
            pass
    try:
        data = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: it names no file
        data = path.encode("utf-8", "surrogatepass")
    return data.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def path_from_stored(text: str) -> str:
    """The path whose stored form is ``text`` (the inverse of :func:`stored_path`)."""
    if "\\" not in text:
        return text
    data = _ESCAPED_BYTE.sub(lambda match: bytes([int(match[1], 16)]), text.encode("utf-8"))
    return data.decode("utf-8", "surrogateescape")


class PathText(TypeDecorator):
    """A text column of paths: values go in through :func:`stored_path` and come out
    through :func:`path_from_stored`, in every statement (comparisons, IN, GLOB included)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        # PostgreSQL compares paths byte by byte, as SQLite does: folder ranges mean the same
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Text(collation="C"))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value, dialect):
        return None if value is None else stored_path(value)

    def process_result_value(self, value, dialect):
        return None if value is None else path_from_stored(value)


__all__ = ["stored_path", "path_from_stored", "PathText"]
