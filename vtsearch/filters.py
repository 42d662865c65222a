"""Search filters: which images a query may return, resolved in SQL against the catalog.

The catalog turns a :class:`SearchFilter` into the set of allowed ids; the query path
then either hands FAISS an id selector, or — when the filter keeps few images — scores
the allowed images exactly, so a selective filter never silently loses results that an
approximate index would have missed.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import QueryError

FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


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
        if self.path_prefix is not None:
            object.__setattr__(self, "path_prefix", os.path.abspath(os.path.expanduser(self.path_prefix)))
        formats = tuple(FORMAT_ALIASES.get(f.upper().lstrip("."), f.upper().lstrip(".")) for f in self.formats)
        object.__setattr__(self, "formats", formats)
        for name in ("min_width", "min_height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise QueryError(f"{name} must be a non-negative integer, got {value!r}")
        if self.glob is not None and not self.glob.strip():
            raise QueryError("the glob pattern is empty")

    @property
    def active(self) -> bool:
        return any(value not in (None, ()) for value in asdict(self).values())

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, ())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchFilter":
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        if isinstance(known.get("formats"), str):
            known["formats"] = (known["formats"],)
        if "formats" in known:
            known["formats"] = tuple(known["formats"])
        for key in ("modified_after", "modified_before"):
            if isinstance(known.get(key), str):
                known[key] = parse_time(known[key])
        return cls(**known)


def parse_time(text: str) -> float:
    """ISO 8601 date or date-time (local time unless it names a zone) → epoch seconds."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(f"cannot read {text!r} as a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]") from None
    return moment.timestamp()


__all__ = ["SearchFilter", "parse_time"]
