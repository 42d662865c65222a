"""Database failures become messages that name the catalog.

Every public :class:`Catalog` method is wrapped: a damaged catalog is never mistaken for
an empty one, and a busy or unreachable one says so.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterator

from sqlalchemy.exc import DatabaseError, OperationalError

from ...errors import CatalogDamagedError, VtsearchError
from .server import is_url

UNGUARDED = frozenset({"open", "close"})  # open maps its own errors; close only disposes


def catalog_error(location: str, error: DatabaseError) -> VtsearchError:
    reason = failure_reason(error)
    if "locked" in reason or "busy" in reason:
        return VtsearchError(
            f"catalog {location} is busy ({reason}); try again when the other process is done"
        )
    if isinstance(error, OperationalError) and is_url(location):
        return VtsearchError(f"catalog {location} cannot be reached ({reason})")
    return CatalogDamagedError(f"catalog {location} is damaged ({reason})", location=location, reason=reason)


def failure_reason(error: DatabaseError) -> str:
    """The driver's own message, without SQLAlchemy's statement and background link."""
    return str(getattr(error, "orig", None) or error).strip()


def guarded(method: Callable) -> Callable:
    """Turn a database failure inside a catalog method into a message naming the catalog."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except DatabaseError as error:
                raise catalog_error(self.location, error) from None
        return generator

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except DatabaseError as error:
            raise catalog_error(self.location, error) from None
    return wrapper


def guard_public_methods(cls: type) -> type:
    """Wrap every public method of ``cls`` and of the parts it is composed of, once."""
    names = {name for owner in cls.__mro__[:-1] for name, member in vars(owner).items()
             if inspect.isfunction(member) and not name.startswith("_") and name not in UNGUARDED}
    for name in sorted(names):
        setattr(cls, name, guarded(inspect.getattr_static(cls, name)))
    return cls
