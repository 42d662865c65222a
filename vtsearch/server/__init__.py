"""``vtsearch serve``: an HTTP server over one or more indexes (see :mod:`.app`).

Modules: :mod:`.app` assembles the Starlette app from :mod:`.api` (the ``/api`` routes and
the page) and :mod:`.clip_compat` (clip-retrieval's routes); both take a
:class:`~.context.ServerContext` (the :class:`Library` of served indexes and the
settings). :mod:`.params` reads requests, :mod:`.limits` bounds them, and
:mod:`.thumbnails` caches thumbnails; :mod:`.hosts` checks the ``Host`` a request names,
:mod:`.files` opens the files behind catalog rows, and :mod:`.protocol` bounds how long
a client may take to send a request's head.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from typing import Sequence

from .app import create_app
from .context import ServerSettings
from .hosts import allowed_hosts
from .library import Library

CONFIG_ENV_VAR = "VTSEARCH_SERVE_CONFIG"  # how ``--workers N`` hands the setup to each worker


# how uvicorn treats connections (see README, "Security"): a connection must finish each
# request's head within protocol.HEAD_TIMEOUT_S (h11 refuses one past 16 KiB while it is
# incomplete), may idle 5 s between requests, and past 512 open connections or running
# requests new requests get 503
UVICORN_OPTIONS = {
    "http": "vtsearch.server.protocol:HeadTimeoutH11Protocol",
    "timeout_keep_alive": 5,
    "h11_max_incomplete_event_size": 16 * 1024,  # a request's head, in bytes
    "limit_concurrency": 512,
}


def serve(folders: Sequence[str], host: str = "127.0.0.1", port: int = 1234, workers: int = 1,
          device: str = "auto", settings: ServerSettings | None = None, log_level: str = "info") -> None:
    """Open the indexes (failing here, clearly, when one cannot be opened) and serve them.
    ``settings.allowed_hosts`` should hold ``host`` (see :func:`.hosts.allowed_hosts`)."""
    import uvicorn

    settings = settings or ServerSettings(allowed_hosts=allowed_hosts(host))
    library = Library.open(folders, device, warm_up=workers == 1,
                           thumbnail_cache_bytes=settings.thumbnail_cache_bytes)
    if workers == 1:
        uvicorn.run(create_app(library, settings), host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)
        return
    library.close()  # each worker process opens its own
    os.environ[CONFIG_ENV_VAR] = json.dumps({"folders": [os.path.abspath(f) for f in folders], "device": device,
                                             "settings": dataclasses.asdict(settings)})
    uvicorn.run("vtsearch.server:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, **UVICORN_OPTIONS)


def app_from_environment():
    """The app for one worker process of ``vtsearch serve --workers N``."""
    config = json.loads(os.environ[CONFIG_ENV_VAR])
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in config["settings"].items()}
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


__all__ = ["ServerSettings", "Library", "UVICORN_OPTIONS", "allowed_hosts", "create_app", "serve", "is_loopback"]
