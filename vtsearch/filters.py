"""Search filters: which images a query may return, resolved in SQL against the catalog.

The catalog turns a :class:`SearchFilter` into the set of allowed ids; the query path
then either hands FAISS an id selector, or — when the filter keeps few images — scores
the allowed images exactly, so a selective filter never silently loses results that an
approximate index would have missed.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import QueryError

FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
MAX_SIDE = 2**31 - 1  # pixels; the catalog's integers go further, no image does
MAX_EPOCH_S = 9_223_372_035  # the catalog keeps mtimes in int64 nanoseconds: 1677-09-22 .. 2262-04-11
MAX_PATTERN_CHARS = 4096  # PATH_MAX; SQLite refuses a GLOB pattern over 50,000 bytes
MAX_FORMATS, MAX_FORMAT_CHARS = 64, 16


@dataclass(frozen=True)
class SearchFilter:
    """Conditions on catalog rows; all given conditions must hold."""

    path_prefix: str | None = None  # a folder (or file): the image lies at or under it
    glob: str | None = None  # on the full path; a pattern without "/" is matched against the name
    formats: tuple[str, ...] = field(default_factory=tuple)  # Pillow format names: JPEG, PNG, ...
    min_width: int | None = None
    min_height: int | None = None
    modified_after: float | None = None  # seconds since the epoch (file mtime)
    modified_before: float | None = None

    def __post_init__(self) -> None:
        """Check every condition here, so a value no catalog can compare against (a
        2^70 width, a time in the year 10^292, a 60,000-character pattern) is a
        :class:`QueryError` naming it, not a database error."""
        for name in ("path_prefix", "glob"):
            _check_pattern(name, getattr(self, name))
        if self.path_prefix is not None:
            object.__setattr__(self, "path_prefix", os.path.abspath(os.path.expanduser(self.path_prefix)))
        object.__setattr__(self, "formats", _checked_formats(self.formats))
        for name in ("min_width", "min_height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value <= MAX_SIDE):
                raise QueryError(f"{name} must be a non-negative integer up to {MAX_SIDE}, got {_shown(value)}")
        for name in ("modified_after", "modified_before"):
            value = getattr(self, name)
            if value is not None and not _is_time(value):
                raise QueryError(f"{name} must be a time between the years 1678 and 2261 "
                                 f"(seconds since 1970), got {_shown(value)}")

    @property
    def active(self) -> bool:
        return any(value not in (None, ()) for value in asdict(self).values())

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, ())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchFilter":
        known = {key: data[key] for key in cls.__dataclass_fields__ if data.get(key) is not None}
        if isinstance(known.get("formats"), str):
            known["formats"] = (known["formats"],)
        if isinstance(known.get("formats"), list):
            known["formats"] = tuple(known["formats"])
        for key in ("modified_after", "modified_before"):
            if isinstance(known.get(key), str):
                known[key] = parse_time(known[key])
        return cls(**known)


def parse_time(text: str) -> float:
    """ISO 8601 date or date-time (local time unless it names a zone) → epoch seconds."""
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):  # OverflowError, OSError: a year the platform's clock lacks
        raise QueryError(f"cannot read {_shown(text)} as a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]") from None


def _check_pattern(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise QueryError(f"{name} must be a string, got {type(value).__name__}")
    if name == "glob" and not value.strip():
        raise QueryError("the glob pattern is empty")
    if len(value) > MAX_PATTERN_CHARS:
        raise QueryError(f"{name} is {len(value):,} characters long; the limit is {MAX_PATTERN_CHARS:,}")
    if "\0" in value:
        raise QueryError(f"{name} contains a NUL character")


def _checked_formats(formats: object) -> tuple[str, ...]:
    if not isinstance(formats, (tuple, list)) or not all(isinstance(f, str) for f in formats):
        raise QueryError("formats must be a list of format names (JPEG, PNG, ...)")
    formats = tuple(formats)
    if len(formats) > MAX_FORMATS or any(len(f) > MAX_FORMAT_CHARS for f in formats):
        raise QueryError(f"formats takes at most {MAX_FORMATS} names of at most {MAX_FORMAT_CHARS} characters")
    return tuple(FORMAT_ALIASES.get(f.upper().lstrip("."), f.upper().lstrip(".")) for f in formats)


def _is_time(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and abs(value) <= MAX_EPOCH_S)


def _shown(value: object) -> str:
    """A value as a message quotes it: cut short, and no 5,000-digit integer spelled out."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["SearchFilter", "parse_time"]
