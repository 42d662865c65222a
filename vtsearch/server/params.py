"""Reading requests: a JSON object or a multipart form becomes one dict of fields, and
each field is checked for its type and range, with a message naming the field.

Numbers and booleans may arrive as strings (form fields, and clip-retrieval's client
sends some that way). A JSON body is parsed whatever its Content-Type says, since
clip-retrieval's client sends none.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..filters import SearchFilter
from .limits import HTTPError

MAX_LABELS = 1_000
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
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPError(400, f"malformed JSON: {error}") from None
    if not isinstance(fields, dict):
        raise HTTPError(400, f"the request body must be a JSON object, not {type(fields).__name__}")
    return fields


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
        if any(isinstance(value, UploadFile) for value in values):
            fields[name] = await values[0].read()
        elif name == "labels":
            fields[name] = [line for value in values for line in str(value).splitlines()]
        else:
            fields[name] = values[-1]
    await form.close()
    return fields


def integer(fields: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HTTPError(400, f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def boolean(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    if not isinstance(value, bool):
        raise HTTPError(400, f"{name} must be true or false, got {value!r}")
    return value


def string(fields: dict[str, Any], name: str) -> str | None:
    """A non-empty string, or None when the field is absent, null or empty."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"{name} must be a string, got {type(value).__name__}")
    return value


def strings(fields: dict[str, Any], name: str) -> list[str] | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HTTPError(400, f"{name} must be a list of strings")
    if len(value) > MAX_LABELS:
        raise HTTPError(400, f"{name} holds {len(value)} items; the limit is {MAX_LABELS}")
    return value


def search_filter(fields: dict[str, Any]) -> SearchFilter | None:
    """The ``filters`` object (a JSON string in a form) as a :class:`SearchFilter`."""
    value = fields.get("filters")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise HTTPError(400, f"filters: malformed JSON: {error}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "filters must be an object")
    for key, item in value.items():
        if key not in FILTER_FIELDS:
            raise HTTPError(400, f"unknown filter {key!r}; known: {', '.join(FILTER_FIELDS)}")
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
        width, height = Image.open(io.BytesIO(value)).size
    except Image.DecompressionBombError as error:
        raise HTTPError(413, f"{name} is too large: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HTTPError(400, f"{name} is not an image Pillow can read") from None
    if width * height > max_pixels:
        raise HTTPError(413, f"{name} is {width}x{height} = {width * height:,} pixels; "
                             f"the limit is {max_pixels:,}")
    return value
