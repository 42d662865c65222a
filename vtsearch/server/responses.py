"""JSON responses that encode whatever a catalog path holds (:func:`vtsearch.records.json_text`)."""

from __future__ import annotations

from typing import Any

from starlette import responses

from ..records import json_text


class JSONResponse(responses.JSONResponse):
    """Starlette's JSON response, with a non-UTF-8 file name's bytes escaped, not a 500."""

    def render(self, content: Any) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode("utf-8")
