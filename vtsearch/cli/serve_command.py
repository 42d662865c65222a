"""The serve command: indexes over HTTP (the web page, /api and clip-retrieval's routes)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DEFAULT_INDEX_DIR, INDEX_ENV_VAR, default_index_dir
from .app import device_option, fail_cleanly, main
from .render import note

MIB = 2**20


@main.command("serve")
@click.option("--index", "index_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              envvar=INDEX_ENV_VAR, show_envvar=True,
              help=f"Index directory to serve; repeat for several [default: {DEFAULT_INDEX_DIR}].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default: only this machine can connect).")
@click.option("--port", type=click.IntRange(0, 65535), default=1234, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes; each loads its own copy of the model.")
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=20.0, show_default=True,
              help="Largest uploaded query image, in MiB.")
@click.option("--max-upload-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              help="Largest uploaded query image, in pixels (width × height).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Requests doing model work at once per process; more wait in a bounded queue.")
@click.option("--queue", type=click.IntRange(0, 100_000), default=64, show_default=True,
              help="Requests that may wait for model work; beyond that the server answers 503.")
@click.option("--thumbnail-cache-mb", type=click.IntRange(1), default=1024, show_default=True,
              help="Disk for cached thumbnails, per index; the least recently served go first.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="An origin (https://front.example) whose pages may call the clip-retrieval routes and "
                   "read their answers (paths and thumbnails); repeat for several, '*' for any "
                   "[default: none].")
@click.option("--allowed-host", "extra_hosts", multiple=True, metavar="NAME",
              help="Another host name requests may use (the Host header), e.g. the name a proxy or other "
                   "machines reach this server by; repeat for several, '*' for any. Loopback names and "
                   "--host are always allowed.")
@device_option
@fail_cleanly
def serve_command(index_dirs, host, port, workers, max_upload_mb, max_upload_pixels, concurrency, queue,
                  thumbnail_cache_mb, cors_origins, extra_hosts, device):
    """Serve indexes over HTTP: a web page to search and look, a JSON API under /api,
    and clip-retrieval's back-end routes (/knn-service, /metadata, /indices-list).

    \b
    Examples:
      vtsearch serve                      # then open http://127.0.0.1:1234
      vtsearch serve --index indexes/photos --index indexes/products --port 8080
      vtsearch serve --cors-origin https://front.example   # clip-retrieval's web front elsewhere
    """
    from ..server import ServerSettings, allowed_hosts, is_loopback, serve

    settings = ServerSettings(max_upload_bytes=int(max_upload_mb * MIB), max_upload_pixels=max_upload_pixels,
                              concurrency=concurrency, queue=queue, cors_origins=tuple(cors_origins),
                              allowed_hosts=allowed_hosts(host, extra_hosts),
                              thumbnail_cache_bytes=thumbnail_cache_mb * MIB)
    if not is_loopback(host):
        note(f"warning: listening on {host}: other machines can search these indexes and see their "
             "images and file paths; vtsearch has no authentication (put it behind a proxy that has)")
    if "*" in cors_origins:
        note("warning: --cors-origin '*': any web page open in a browser that can reach this server can "
             "read its search results, thumbnails and file paths")
    serve([str(d) for d in index_dirs] or [str(default_index_dir())], host=host, port=port, workers=workers,
          device=device, settings=settings)
