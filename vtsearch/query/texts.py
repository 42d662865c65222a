"""Text collections: files of texts (captions, product titles, labels) to match images against.

Three formats, told apart by the file's extension:

* plain text (``.txt`` or anything else): one text per line; blank lines are skipped;
* JSON Lines (``.jsonl``, ``.ndjson``): ``{"text": "...", "id": "...", ...}`` per line; ``id``
  (optional) is the caller's own key, every other field is kept as metadata;
* CSV (``.csv``, ``.tsv``): a header row; the text is in ``column`` (default ``text``),
  ``id`` is used as the key when present, every other column is kept as metadata.

A text that is empty (in JSON Lines or CSV) or longer than :data:`MAX_TEXT_CHARS`, a key
given twice, and a CSV quote that is never closed (or closed in mid-field) are errors that
name the file and line: nothing from a faulty file is added. A UTF-8 byte-order mark (as
Excel's "CSV UTF-8" writes) is dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import QueryError, VtsearchError
from ..records import TextRecord, TextRow

if TYPE_CHECKING:
    from ..encoder import Encoder

MAX_TEXT_CHARS = 2_000  # far past the ~300 characters a 77-token text tower reads


def check_text_value(text: Any, where: str) -> str:
    """A text to embed (a label, a collection's text), stripped; a QueryError naming
    ``where`` when it is not one."""
    if not isinstance(text, str):
        raise QueryError(f"{where}: the text must be a string, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise QueryError(f"{where}: the text is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate: no database column or model takes it
        raise QueryError(f"{where}: the text is not valid Unicode (character {error.start + 1})") from None
    if len(text) > MAX_TEXT_CHARS:
        raise QueryError(f"{where}: the text is {len(text):,} characters long; the limit is "
                         f"{MAX_TEXT_CHARS:,} (the model reads only its first 77 tokens)")
    return text


def read_texts(path: str | os.PathLike[str], column: str = "text") -> list[TextRecord]:
    """The texts in ``path``, in file order."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the text
    except OSError as error:
        raise VtsearchError(f"cannot read texts file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise VtsearchError(f"texts file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = _json_lines(content, path)
    elif suffix in (".csv", ".tsv"):
        records = _csv(content, path, column, "\t" if suffix == ".tsv" else ",")
    else:
        records = [TextRecord(check_text_value(line, f"{path}:{number}"))
                   for number, line in enumerate(content.splitlines(), 1) if line.strip()]
    if not records:
        raise VtsearchError(f"texts file {path} holds no texts")
    return records


def _json_lines(content: str, path: Path) -> list[TextRecord]:
    records, keys = [], _KeyLines(path)
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise VtsearchError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(item, dict) or "text" not in item:
            raise VtsearchError(f'{where}: expected an object with a "text" field')
        key = keys.claim(item.get("id"), number)
        meta = {name: value for name, value in item.items() if name not in ("text", "id")}
        records.append(TextRecord(check_text_value(item["text"], where), key, meta))
    return records


def _csv(content: str, path: Path, column: str, delimiter: str) -> list[TextRecord]:
    # strict: a quote left open (or closed in mid-field) is an error, never rows run together
    rows = _csv_rows(csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True), path)
    _line, columns = next(rows, (1, []))
    if column not in columns:
        found = ", ".join(repr(name) for name in columns) or "none"
        raise VtsearchError(f"{path}: no column {column!r} (columns: {found}); name it with --column")
    records, keys = [], _KeyLines(path)
    for number, fields in rows:
        row = dict(zip(columns, fields))
        key = keys.claim(row.get("id") or None, number)
        meta = {name: value for name, value in row.items() if name not in (column, "id")}
        records.append(TextRecord(check_text_value(row.get(column) or "", f"{path}:{number}"), key, meta))
    return records


def _csv_rows(reader: Iterator[list[str]], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(the line a row starts on, its fields), blank lines left out."""
    while True:
        start = reader.line_num + 1  # type: ignore[attr-defined]
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise _malformed(path, start, error) from None
        if fields:
            yield start, fields


def _malformed(path: Path, line: int, error: csv.Error) -> VtsearchError:
    return VtsearchError(f"{path}:{line}: a quoted field that starts on this line is not closed where it "
                         f"should be ({error}; a quote left open?)")


class _KeyLines:
    """The line each key was first given on: a key given twice is an error naming both."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: dict[str, int] = {}

    def claim(self, key: Any, number: int) -> str | None:
        if key is None:
            return None
        key = str(key)
        first = self.lines.setdefault(key, number)
        if first != number:
            raise VtsearchError(f"{self.path}: the id {key!r} is given on line {first} and again on line {number}")
        return key


__all__ = ["TextRecord", "TextRow", "read_texts", "check_text_value", "MAX_TEXT_CHARS"]


TEXT_BATCH = 256  # texts encoded per forward pass


def encode_texts(encoder: "Encoder", texts: list[str]) -> "np.ndarray | None":
    """(n, D) unit vectors of ``texts``, encoded in batches; None for no texts."""
    if not texts:
        return None
    return np.concatenate([encoder.encode_texts(texts[start:start + TEXT_BATCH])
                           for start in range(0, len(texts), TEXT_BATCH)])
