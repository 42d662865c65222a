"""Reading requests: a JSON object or a multipart form becomes one dict of fields, and
each field is checked for its type and range, with a message naming the field.

Numbers and booleans may arrive as strings (form fields, and clip-retrieval's client
sends some that way). A JSON body is parsed whatever its Content-Type says, since
clip-retrieval's client sends none.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..decode import peek_size
from ..errors import ImageDecodeError
from ..filters import SearchFilter
from ..query.texts import MAX_TEXT_CHARS
from .limits import HTTPError, shown

MAX_LABELS = 1_000
INTEGER_TEXT = re.compile(r"^\s*-?[0-9]{1,30}\s*$")  # as a form sends one; longer is no integer we take
FILTER_FIELDS = {
    "path_prefix": str, "glob": str, "formats": list, "min_width": int, "min_height": int,
    "modified_after": (str, int, float), "modified_before": (str, int, float),
}


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields: a form (files as bytes) or a JSON object."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _read_form(request)
    body = await request.body()
    if not body.strip():
        raise HTTPError(400, "the request body is empty: send a JSON object")
    fields = parse_json(body, "the request body")
    if not isinstance(fields, dict):
        raise HTTPError(400, f"the request body must be a JSON object, not {type(fields).__name__}")
    return fields


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON text, or 400 saying what is wrong with it (nesting past Python's recursion
    limit and integers past its digit limit included)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPError(400, f"{what}: malformed JSON: {error}") from None
    except RecursionError:
        raise HTTPError(400, f"{what}: the JSON is nested too deeply") from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise HTTPError(400, f"{what}: the JSON holds a number with too many digits") from None


async def _read_form(request: Request) -> dict[str, Any]:
    try:
        form = await request.form(max_files=1, max_fields=MAX_LABELS + 50)
    except HTTPError:
        raise
    except Exception as error:  # python-multipart's and Starlette's parse errors
        raise HTTPError(400, f"malformed multipart form: {error}") from None
    fields: dict[str, Any] = {}
    for name in form.keys():
        values = form.getlist(name)
        uploads = [value for value in values if isinstance(value, UploadFile)]
        if uploads:  # a file wins over a text field of the same name
            fields[name] = await uploads[0].read()
        elif name == "labels":
            fields[name] = [line for value in values for line in str(value).splitlines()]
        else:
            fields[name] = values[-1]
    await form.close()
    return fields


def integer(fields: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """The field as an integer in [low, high]; ``default`` when absent (None: the library's own)."""
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and INTEGER_TEXT.match(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HTTPError(400, f"{name} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {shown(value)}")
    return value


def boolean(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    if not isinstance(value, bool):
        raise HTTPError(400, f"{name} must be true or false, got {shown(value)}")
    return value


def string(fields: dict[str, Any], name: str) -> str | None:
    """A non-empty string, or None when the field is absent, null or empty."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"{name} must be a string, got {type(value).__name__}")
    return _unicode(value, name)


def _unicode(value: str, name: str) -> str:
    """``value``, when it is text a model can read: JSON's ``\\ud800`` is a lone surrogate, no character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPError(400, f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def strings(fields: dict[str, Any], name: str) -> list[str] | None:
    """A list of texts (labels): each a non-empty string the text tower can take."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HTTPError(400, f"{name} must be a list of strings")
    if len(value) > MAX_LABELS:
        raise HTTPError(400, f"{name} holds {len(value)} items; the limit is {MAX_LABELS}")
    for number, item in enumerate(value, 1):
        _unicode(item, f"{name}: item {number}")
        if not item.strip():
            raise HTTPError(400, f"{name}: item {number} is empty")
        if len(item.strip()) > MAX_TEXT_CHARS:
            raise HTTPError(400, f"{name}: item {number} is {len(item.strip()):,} characters long; "
                                 f"the limit is {MAX_TEXT_CHARS:,}")
    return value


def search_filter(fields: dict[str, Any]) -> SearchFilter | None:
    """The ``filters`` object (a JSON string in a form) as a :class:`SearchFilter`."""
    value = fields.get("filters")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = parse_json(value, "filters")
    if not isinstance(value, dict):
        raise HTTPError(400, "filters must be an object")
    for key, item in value.items():
        if key not in FILTER_FIELDS:
            raise HTTPError(400, f"unknown filter {shown(key)}; known: {', '.join(FILTER_FIELDS)}")
        if item is None:
            continue
        expected = FILTER_FIELDS[key]
        if key == "formats" and isinstance(item, str):
            continue
        if not isinstance(item, expected) or isinstance(item, bool) \
                or (key == "formats" and not all(isinstance(name, str) for name in item)):
            raise HTTPError(400, f"filters.{key} has the wrong type ({type(item).__name__})")
    return SearchFilter.from_dict(value)


def image_bytes(fields: dict[str, Any], name: str, max_bytes: int, max_pixels: int) -> bytes | None:
    """An uploaded image (form file) or base64 text (JSON), checked against the upload
    limits from its header alone, before anything is decoded."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPError(400, f"{name} must be an image file's bytes in base64") from None
    if not isinstance(value, bytes):
        raise HTTPError(400, f"{name} must be an image file (base64 in JSON, or a form file)")
    if not value:
        raise HTTPError(400, f"{name} is an empty file")
    if len(value) > max_bytes:
        raise HTTPError(413, f"{name} is {len(value):,} bytes; the limit is {max_bytes:,}")
    try:
        width, height = peek_size(value)  # allow-listed raster formats only: never EPS (Ghostscript)
    except Image.DecompressionBombError as error:
        raise HTTPError(413, f"{name} is too large: {error}") from None
    except ImageDecodeError as error:
        raise HTTPError(400, f"{name} is {error}") from None
    if width * height > max_pixels:
        raise HTTPError(413, f"{name} is {width}x{height} = {width * height:,} pixels; "
                             f"the limit is {max_pixels:,}")
    return value
