"""Advice by error type: the library says what went wrong, the CLI says which flag helps.

Library errors carry data (the missing index's ``path``, the ``requested`` encoder, ...)
and a message that suits every caller, the HTTP server included; advice that names
command-line flags or commands belongs to the command line, here. Each hint reads the
data it needs and gives nothing when the error lacks it, and says where its advice goes
on the line. A message that already holds its advice (as a few library messages still
do: tests match them) is left as it is, so no advice shows twice.

A few errors are about a choice the user made with a flag (``--device cuda``, ``--engine
ray``); :data:`CLI_WORDING` says those in the flag's own terms instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from ..errors import (
    OFFLINE_ADVICE, CatalogDamagedError, CatalogMismatchError, DeviceUnavailableError, IndexNotFoundError,
    MissingExtraError, ModelLoadError, ModelMismatchError, NeedsRepairError, NotEnoughGpusError, NoTextCollectionError,
    PretrainedTagMissingError, RayNotInstalledError, RerankerMismatchError, VtsearchError, WeightsChangedError,
)

# where the advice goes after the message
ASIDE = "{message} ({advice})"
CLAUSE = "{message}; {advice}"
REMEDY = "{message}: {advice}"


@dataclass(frozen=True)
class Hint:
    """``advise`` reads the advice from an error's data (None: none to give); ``line``
    places it after the message."""

    advise: Callable[[Any], str | None]
    line: str = ASIDE


def _create_the_index(error: IndexNotFoundError) -> str | None:
    path = getattr(error, "path", None)
    return None if path is None else f"create one with: vtsearch index PATH --index {path}"


def _use_the_index_model(error: ModelMismatchError) -> str | None:
    # Only when another encoder was asked for (a Ray worker's differing weights have no fix here).
    if getattr(error, "requested", None) is None:
        return None
    return "omit --model to use the index's own model, or choose another --index"


def _load_a_local_model(error: ModelLoadError) -> str | None:
    return OFFLINE_ADVICE if getattr(error, "offline", False) else None


def _name_the_weights(error: PretrainedTagMissingError) -> str:
    return f"give --pretrained TAG (known: {', '.join(error.known_tags) or 'none'}) or --model local-dir:/path"


def _install_the_extra(error: MissingExtraError) -> str:
    return f"install it: pip install -e '.[{error.extra}]' (or: pip install {error.package})"


HINTS: dict[type[VtsearchError], Hint] = {
    IndexNotFoundError: Hint(_create_the_index),
    ModelMismatchError: Hint(_use_the_index_model, CLAUSE),
    WeightsChangedError: Hint(lambda _: "restore them or index again into a new --index", CLAUSE),
    ModelLoadError: Hint(_load_a_local_model, CLAUSE),
    PretrainedTagMissingError: Hint(_name_the_weights, REMEDY),
    MissingExtraError: Hint(_install_the_extra, CLAUSE),
    CatalogMismatchError: Hint(lambda _: "leave out --catalog, or index into a new --index", CLAUSE),
    CatalogDamagedError: Hint(lambda _: "restore it from a backup, or index again into a new --index", CLAUSE),
    NeedsRepairError: Hint(lambda _: "run vtsearch check --repair", CLAUSE),
    RerankerMismatchError: Hint(lambda _: "retrain it with vtsearch train-reranker", CLAUSE),
    NoTextCollectionError: Hint(lambda _: "add one with vtsearch texts add, or give labels to match against",
                                REMEDY),
}

# errors about a choice made with a flag, said in the flag's terms
CLI_WORDING: dict[type[VtsearchError], Callable[[Any], str]] = {
    DeviceUnavailableError: lambda error: f"--device {error.device} was asked for, but no CUDA GPU is available",
    RayNotInstalledError: lambda error: f"--engine ray needs Ray: {error.install}",
    NotEnoughGpusError: lambda error: (f"the Ray cluster has {error.available:g} GPUs; "
                                       f"--num-gpus-per-worker {error.per_worker:g} asks for more"),
}

Entry = TypeVar("Entry")


def _nearest(table: Mapping[type[VtsearchError], Entry], error: VtsearchError) -> Entry | None:
    """The entry for ``error``'s type, or for its nearest base class that has one."""
    return next((table[kind] for kind in type(error).__mro__ if kind in table), None)


def one_line(error: VtsearchError) -> str:
    """The error's message (in the CLI's terms) followed by the CLI's advice, when it has
    some to add."""
    wording = _nearest(CLI_WORDING, error)
    message = str(error) if wording is None else wording(error)
    hint = _nearest(HINTS, error)
    advice = None if hint is None else hint.advise(error)
    if advice is None or advice in message:
        return message
    return hint.line.format(message=message, advice=advice)
