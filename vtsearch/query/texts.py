"""Text collections: files of texts (captions, product titles, labels) to match images against.

Three formats, told apart by the file's extension:

* plain text (``.txt`` or anything else): one text per line; blank lines are skipped;
* JSON Lines (``.jsonl``, ``.ndjson``): ``{"text": "...", "id": "...", ...}`` per line; ``id``
  (optional) is the caller's own key, every other field is kept as metadata;
* CSV (``.csv``, ``.tsv``): a header row; the text is in ``column`` (default ``text``),
  ``id`` is used as the key when present, every other column is kept as metadata.

A text that is empty (in JSON Lines or CSV) or longer than :data:`MAX_TEXT_CHARS` is an
error that names the file and line: nothing from a faulty file is added.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import VtsearchError
from ..records import TextRecord, TextRow

if TYPE_CHECKING:
    from ..encoder import Encoder

MAX_TEXT_CHARS = 2_000  # far past the ~300 characters a 77-token text tower reads


def check_text_value(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise VtsearchError(f"{where}: the text must be a string, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise VtsearchError(f"{where}: the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise VtsearchError(f"{where}: the text is {len(text):,} characters long; the limit is "
                            f"{MAX_TEXT_CHARS:,} (the model reads only its first 77 tokens)")
    return text


def read_texts(path: str | os.PathLike[str], column: str = "text") -> list[TextRecord]:
    """The texts in ``path``, in file order."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
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
    records = []
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
        key = item.get("id")
        meta = {name: value for name, value in item.items() if name not in ("text", "id")}
        records.append(TextRecord(check_text_value(item["text"], where), None if key is None else str(key), meta))
    return records


def _csv(content: str, path: Path, column: str, delimiter: str) -> list[TextRecord]:
    reader = csv.DictReader(content.splitlines(), delimiter=delimiter)
    if reader.fieldnames is None or column not in reader.fieldnames:
        found = ", ".join(reader.fieldnames or []) or "none"
        raise VtsearchError(f"{path}: no column {column!r} (columns: {found}); name it with --column")
    records = []
    for number, row in enumerate(reader, 2):
        key = row.get("id") or None
        meta = {name: value for name, value in row.items() if name not in (column, "id") and name is not None}
        records.append(TextRecord(check_text_value(row[column] or "", f"{path}:{number}"), key, meta))
    return records


__all__ = ["TextRecord", "TextRow", "read_texts", "check_text_value", "MAX_TEXT_CHARS"]


TEXT_BATCH = 256  # texts encoded per forward pass


def encode_texts(encoder: "Encoder", texts: list[str]) -> "np.ndarray | None":
    """(n, D) unit vectors of ``texts``, encoded in batches; None for no texts."""
    if not texts:
        return None
    return np.concatenate([encoder.encode_texts(texts[start:start + TEXT_BATCH])
                           for start in range(0, len(texts), TEXT_BATCH)])
