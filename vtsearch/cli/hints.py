"""Advice by error type: the library says what went wrong, the CLI says which flag helps.

Library errors carry data (the missing index's ``path``, the ``requested`` encoder, ...)
and a message that suits every caller, the HTTP server included; advice that names
command-line flags belongs to the command line, here. Each hint reads the data it needs
and gives nothing when the error lacks it. A message that already holds its advice (as
library messages written before this split do) is left as it is, so no advice shows twice.
"""

from __future__ import annotations

from typing import Callable

from ..errors import IndexNotFoundError, ModelLoadError, ModelMismatchError, VtsearchError

OFFLINE_ADVICE = (
    "without network access, point --model at a local open_clip folder: "
    "--model local-dir:/path/to/model (open_clip_config.json + open_clip_model.safetensors)"
)


def _create_the_index(error: VtsearchError) -> str | None:
    path = getattr(error, "path", None)
    return None if path is None else f"create one with: vtsearch index PATH --index {path}"


def _use_the_index_model(error: VtsearchError) -> str | None:
    # Only when another encoder was asked for; weights changed on disk need another fix.
    if getattr(error, "requested", None) is None:
        return None
    return "omit --model to use the index's own model, or choose another --index"


def _load_a_local_model(error: VtsearchError) -> str | None:
    return OFFLINE_ADVICE if getattr(error, "offline", False) else None


HINTS: dict[type[VtsearchError], Callable[[VtsearchError], str | None]] = {
    IndexNotFoundError: _create_the_index,
    ModelMismatchError: _use_the_index_model,
    ModelLoadError: _load_a_local_model,
}


def hint_for(error: VtsearchError) -> str | None:
    """The advice for ``error``'s type (or its nearest base class that has one)."""
    for kind in type(error).__mro__:
        if kind in HINTS:
            return HINTS[kind](error)
    return None


def one_line(error: VtsearchError) -> str:
    """The error's message followed by the CLI's advice, when it has some to add."""
    message = str(error)
    advice = hint_for(error)
    if advice is None or advice in message:
        return message
    return f"{message} ({advice})"
