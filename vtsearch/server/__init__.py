"""``vtsearch serve``: an HTTP server over one or more indexes (see :mod:`.app`).

Modules: :mod:`.app` assembles the Starlette app from :mod:`.api` (the ``/api`` routes and
the page) and :mod:`.clip_compat` (clip-retrieval's routes); both take a
:class:`~.context.ServerContext` (the :class:`Library` of served indexes and the
settings). :mod:`.params` reads requests, :mod:`.limits` bounds them, and
:mod:`.thumbnails` caches thumbnails.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from typing import Sequence

from .app import create_app
from .context import ServerSettings
from .library import Library

CONFIG_ENV_VAR = "VTSEARCH_SERVE_CONFIG"  # how ``--workers N`` hands the setup to each worker


def serve(folders: Sequence[str], host: str = "127.0.0.1", port: int = 1234, workers: int = 1,
          device: str = "auto", settings: ServerSettings | None = None, log_level: str = "info") -> None:
    """Open the indexes (failing here, clearly, when one cannot be opened) and serve them."""
    import uvicorn

    settings = settings or ServerSettings()
    library = Library.open(folders, device, warm_up=workers == 1,
                           thumbnail_cache_bytes=settings.thumbnail_cache_bytes)
    if workers == 1:
        uvicorn.run(create_app(library, settings), host=host, port=port, log_level=log_level)
        return
    library.close()  # each worker process opens its own
    os.environ[CONFIG_ENV_VAR] = json.dumps({"folders": [os.path.abspath(f) for f in folders], "device": device,
                                             "settings": dataclasses.asdict(settings)})
    uvicorn.run("vtsearch.server:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level)


def app_from_environment():
    """The app for one worker process of ``vtsearch serve --workers N``."""
    config = json.loads(os.environ[CONFIG_ENV_VAR])
    settings = config["settings"]
    settings["cors_origins"] = tuple(settings["cors_origins"])
    settings = ServerSettings(**settings)
    library = Library.open(config["folders"], config["device"], thumbnail_cache_bytes=settings.thumbnail_cache_bytes)
    return create_app(library, settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["ServerSettings", "Library", "create_app", "serve", "is_loopback"]
