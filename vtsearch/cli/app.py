"""The ``vtsearch`` click group, the options its commands share, and the error boundary.

This module and the command modules import only click and vtsearch's light base layer
(config, errors, device choices) at module level, so ``vtsearch --help`` starts fast:
torch, open_clip and FAISS are imported inside a command body, when it runs.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from .. import __version__
from ..config import DEFAULT_INDEX_DIR, INDEX_ENV_VAR, PRECISION_CHOICES, default_index_dir
from ..device import DEVICE_CHOICES
from ..errors import VtsearchError
from .hints import one_line

if TYPE_CHECKING:
    from ..index import Index

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT


def fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to one line on stderr (with the CLI's advice) and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VtsearchError as error:
            click.echo(f"Error: {one_line(error)}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished batches are saved.", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def open_index(index_dir: Path | None, device: str = "cpu", **options: Any) -> Index:
    """Open the index at ``index_dir`` (or the default one); imports the heavy library."""
    from ..index import Index

    return Index.open(index_dir or default_index_dir(), device=device, **options)


index_option = click.option(
    "--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
    envvar=INDEX_ENV_VAR, show_envvar=True, default=None,
    help=f"Index directory [default: {DEFAULT_INDEX_DIR}].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
device_option = click.option(
    "--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
    help="Where the encoder runs (auto: CUDA when available).",
)
precision_option = click.option(
    "--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
    help="How the encoder computes (auto: bf16 on CPUs with AVX512-BF16 or AMX, fp32 on other CPUs, "
         "fp16 autocast on a GPU).",
)
recall_k_option = click.option(
    "--recall-k", type=int, default=100, show_default=True,
    help="Stage-1 shortlist size that the reranker reorders.",
)
no_rerank_option = click.option("--no-rerank", is_flag=True, help="Stage 1 only: skip the fusion scorer.")

_PAIRS_OPTIONS = (
    click.argument("pairs", type=click.Path(exists=True, dir_okay=False)),
    click.option("--images-root", type=click.Path(file_okay=False),
                 help="Folder that image paths in PAIRS are relative to [default: PAIRS' folder]."),
    click.option("--split", default=None, help="Karpathy split JSON: which split (train, val, test)."),
)


def pairs_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """PAIRS and how to read it, shared by train-reranker and eval."""
    for option in reversed(_PAIRS_OPTIONS):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vtsearch")
@click.option("-v", "--verbose", is_flag=True, help="Show informational messages.")
def main(verbose: bool) -> None:
    """Index folders of images and search them by text or by example."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="vtsearch: %(message)s", stream=sys.stderr,
    )
    print_names_as_bytes()


def print_names_as_bytes() -> None:
    """A file name that is not UTF-8 reaches Python with a lone surrogate standing for each
    byte that does not decode (``os.fsdecode``); tables print those bytes as they are, as
    ``ls`` does, instead of failing (JSON escapes them: see ``render.print_json``)."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="surrogateescape")
