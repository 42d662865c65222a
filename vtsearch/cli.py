"""The ``vtsearch`` command line: a thin shell over :class:`vtsearch.Index`.

Each command parses its options, calls one library function, and formats the result:
a table for people, ``--json`` for programs. Library errors become one line on stderr
and a non-zero exit code.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .config import DEFAULT_INDEX_DIR, INDEX_ENV_VAR, IngestOptions, default_index_dir
from .device import DEVICE_CHOICES
from .errors import VtsearchError

EXIT_ERROR = 1


def _fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VtsearchError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished batches are saved.", err=True)
            sys.exit(130)

    return wrapper


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


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None))


def _epoch_line(record: dict) -> str:
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.3f}, "
            f"val loss {record['val_loss']:.3f}, val top-1 {record['val_stage1_top1']:.3f} "
            f"-> {record['val_reranked_top1']:.3f} (w {record['w']:.3f})"
            + (f", image -> own caption top-1 {record['val_text_top1']:.3f}" if "val_text_top1" in record else ""))


class _TqdmProgress:
    """Progress on stderr, through tqdm (hidden when stderr is not a terminal)."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.description, unit="img", file=sys.stderr,
                        disable=None, dynamic_ncols=True)

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def note_epoch(self, record: dict) -> None:
        """One line per finished epoch on stderr, above the bar when there is one."""
        from tqdm import tqdm

        tqdm.write(f"{_epoch_line(record)} [{record['seconds']:.0f} s]", file=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vtsearch")
@click.option("-v", "--verbose", is_flag=True, help="Show informational messages.")
def main(verbose: bool) -> None:
    """Index folders of images and search them by text or by example."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="vtsearch: %(message)s", stream=sys.stderr,
    )


@main.command("index")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=True, dir_okay=True))
@index_option
@click.option("--model", default=None,
              help="open_clip model: a name (ViT-B-32), hf-hub:org/name or local-dir:/path. "
                   "[default: the index's own; ViT-B-32 for a new index]")
@click.option("--pretrained", default=None,
              help="Pretrained tag for a named model [default: laion2b_s34b_b79k for ViT-B-32].")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Images encoded per batch.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decoding processes (0: decode in this process) [default: min(4, cores)].")
@click.option("--max-pixels", type=click.IntRange(1), default=IngestOptions.max_pixels,
              show_default=True, help="Refuse images with more pixels (decompression bombs).")
@click.option("--allow-truncated", is_flag=True,
              help="Index truncated files from the part that decodes instead of skipping them.")
@click.option("--keep-missing", is_flag=True,
              help="Keep indexed files that are gone from disk (e.g. on an unmounted drive).")
@click.option("--no-regions", is_flag=True,
              help="New index: keep no region features; the reranker computes them per query.")
@click.option("--region-grid", type=click.IntRange(1, 32), default=None,
              help="New index: pool region features to an N x N grid [default: native, at most 7].")
@click.option("--catalog", "catalog_url", metavar="URL",
              help="New index: keep the catalog in this PostgreSQL database "
                   "(postgresql+psycopg://user@host/db; the password from VTSEARCH_CATALOG_PASSWORD "
                   "or ~/.pgpass) instead of DIR/catalog.sqlite.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where images are decoded and encoded: this process, or a pool of Ray actors "
                   "(the ray extra; images and DIR on storage every host sees at the same paths).")
@click.option("--address", help="--engine ray: the cluster to join [default: RAY_ADDRESS, or a new local one].")
@click.option("--ray-workers", type=click.IntRange(1), default=None,
              help="--engine ray: actors to start [default: one per CPU, or per GPU share].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(0), default=0.0, show_default=True,
              help="--engine ray: GPUs each actor holds (0.5: two actors share a GPU; 0: encode on CPUs).")
@device_option
@json_option
@_fail_cleanly
def index_command(paths, index_dir, model, pretrained, batch_size, workers, max_pixels,
                  allow_truncated, keep_missing, no_regions, region_grid, catalog_url, engine, address,
                  ray_workers, num_gpus_per_worker, device, as_json):
    """Index the images under PATHS (files or folders, walked recursively).

    Running it again brings the index up to date with PATHS: new and changed files are
    encoded, moved or renamed files keep their vectors, and files gone from disk are
    removed (unless --keep-missing). Nothing is encoded twice.

    \b
    Example:
      vtsearch index ~/Pictures --index indexes/photos
    """
    from .config import EncoderSpec
    from .index import Index

    index_dir = index_dir or default_index_dir()
    spec = EncoderSpec.parse(model, pretrained) if (model or pretrained) else None
    options = IngestOptions(batch_size=batch_size, max_pixels=max_pixels,
                            allow_truncated=allow_truncated, keep_missing=keep_missing,
                            **({} if workers is None else {"workers": workers}))
    ray = None
    if engine == "ray":
        from .distributed import RayOptions

        ray = RayOptions(address=address, workers=ray_workers, num_gpus_per_worker=num_gpus_per_worker)
    elif address or ray_workers or num_gpus_per_worker:
        raise click.UsageError("--address, --ray-workers and --num-gpus-per-worker go with --engine ray")
    with Index.open_or_create(index_dir, spec, device=device, store_regions=not no_regions,
                              region_grid=region_grid, catalog_url=catalog_url) as index:
        summary = index.add(paths, options, progress=_TqdmProgress("indexing"), ray=ray)
    if as_json:
        _print_json({"index": str(index_dir), **summary.to_dict(),
                     "errors": [record.to_dict() for record in summary.skipped]})
        return
    rate = summary.indexed / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"indexed {summary.indexed} ({summary.updated} updated), unchanged {summary.unchanged}, "
        f"moved {summary.moved}, removed {summary.removed}, skipped {len(summary.skipped)}, "
        f"not images {summary.not_images} in {summary.seconds:.1f} s ({rate:.1f} images/s) "
        f"-> {index_dir}"
    )
    if summary.kept_missing:
        click.echo(f"  kept {summary.kept_missing} indexed files that are gone from disk (--keep-missing)")
    for reason, count in sorted(summary.reasons().items()):
        click.echo(f"  skipped, {reason}: {count}")
    if summary.skipped:
        click.echo("  (vtsearch errors lists each skipped file with its reason)")


@main.command("search")
@click.argument("query", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False),
              help="Search by example: the images most like this one.")
@index_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results.")
@click.option("--recall-k", type=int, default=100, show_default=True,
              help="Stage-1 shortlist size that the reranker reorders.")
@click.option("--no-rerank", is_flag=True, help="Stage 1 only: skip the fusion scorer.")
@click.option("--path-prefix", help="Only images at or under this folder.")
@click.option("--glob", help="Only paths matching this pattern (without '/': the file name).")
@click.option("--format", "formats", multiple=True, help="Only this format (jpeg, png, ...); repeatable.")
@click.option("--min-width", type=click.IntRange(0), help="Only images at least this wide (pixels).")
@click.option("--min-height", type=click.IntRange(0), help="Only images at least this tall (pixels).")
@click.option("--modified-after", help="Only files modified at or after this date (YYYY-MM-DD[THH:MM]).")
@click.option("--modified-before", help="Only files modified before this date.")
@click.option("--deduplicate", is_flag=True,
              help="Drop a result that is a near-duplicate (cosine >= 0.94) of a better ranked one.")
@device_option
@json_option
@_fail_cleanly
def search_command(query, image_path, index_dir, k, recall_k, no_rerank, path_prefix, glob, formats,
                   min_width, min_height, modified_after, modified_before, deduplicate, device, as_json):
    """Find the images that best match QUERY text (or --image FILE).

    Text queries are reranked by the index's fusion scorer (see train-reranker).

    \b
    Examples:
      vtsearch search "a dog on a beach"
      vtsearch search "a red cube left of a blue ball" --recall-k 200 --json
      vtsearch search --image holiday.jpg -k 5 --json
      vtsearch search "a harbour at night" --path-prefix ~/Pictures/2023 --format jpeg
    """
    from dataclasses import replace

    from .filters import SearchFilter
    from .index import Index
    from .search import drop_near_duplicates

    if (query is None) == (image_path is None):
        raise click.UsageError("give either a QUERY text or --image FILE (not both)")
    filters = SearchFilter.from_dict({
        "path_prefix": path_prefix, "glob": glob, "formats": formats, "min_width": min_width,
        "min_height": min_height, "modified_after": modified_after, "modified_before": modified_before,
    })
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        response = index.query(query, image=image_path, k=k, recall_k=recall_k, rerank=not no_rerank,
                               filters=filters)
        if deduplicate:
            response = replace(response, results=drop_near_duplicates(
                response.results, index.catalog, index.manifest.embed_dim))
    if as_json:
        _print_json({"query": image_path if image_path is not None else query,
                     "reranked": response.reranked, "timings_ms": response.timings_ms,
                     "notices": response.notices,
                     "results": [result.to_dict() for result in response.results]})
        return
    for notice in response.notices:
        click.echo(f"note: {notice}", err=True)
    if not response.results:
        click.echo("no results (the index is empty)")
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'stage 1':>7}  path")
    for result in response.results:
        click.echo(f"{result.rank:>4}  {result.score:>8.4f}  {result.stage1_rank:>7}  {result.path}")
    timings = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in response.timings_ms.items())
    click.echo(f"({'reranked' if response.reranked else 'stage 1 only'}: {timings})", err=True)


pairs_options = [
    click.argument("pairs", type=click.Path(exists=True, dir_okay=False)),
    click.option("--images-root", type=click.Path(file_okay=False),
                 help="Folder that image paths in PAIRS are relative to [default: PAIRS' folder]."),
    click.option("--split", default=None, help="Karpathy split JSON: which split (train, val, test)."),
]


def _with_pairs(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(pairs_options):
        command = option(command)
    return command


@main.command("train-reranker")
@_with_pairs
@index_option
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--negatives", type=click.IntRange(1), default=15, show_default=True,
              help="Hard negatives per caption, mined from the index's stage-1 neighbours.")
@click.option("--text-negatives", type=click.IntRange(0), default=8, show_default=True,
              help="Image -> text term: wrong texts per image (word-swapped captions, nearest captions); "
                   "0 turns it off.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Captions per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate (after a short warm-up).")
@click.option("--width", type=click.IntRange(8), default=128, show_default=True, help="Scorer width.")
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True, help="Scorer blocks.")
@click.option("--patience", type=click.IntRange(1), default=10, show_default=True,
              help="Stop after this many epochs without a better validation score.")
@device_option
@json_option
@_fail_cleanly
def train_reranker_command(pairs, images_root, split, index_dir, epochs, negatives, text_negatives, batch_size,
                           lr, width, layers, patience, device, as_json):
    """Train the fusion scorer on PAIRS, captioned images that are in the index.

    PAIRS is JSON Lines ({"image": path, "caption": text}), COCO captions JSON, or a
    Karpathy split JSON. The weights are saved into the index and kept as it grows.

    \b
    Example:
      vtsearch train-reranker data/train.jsonl --epochs 6
    """
    from .index import Index
    from .pairs import load_pairs
    from .train import TrainOptions, train_reranker

    loaded = load_pairs(pairs, images_root, split)
    options = TrainOptions(epochs=epochs, negatives=negatives, text_negatives=text_negatives,
                           batch_size=batch_size, lr=lr,
                           width=width, layers=layers, patience=patience, device=device)
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        progress = _TqdmProgress("training")
        reranker, report = train_reranker(index, loaded, options, progress=progress,
                                          on_epoch=None if as_json else progress.note_epoch)
        index.save_reranker(reranker)
    if report.missing:
        click.echo(f"{len(report.missing)} images of PAIRS are not in the index "
                   f"(e.g. {report.missing[0]}); their pairs were left out", err=True)
    if as_json:
        _print_json(report.to_dict())
        return
    for record in report.history:
        click.echo(_epoch_line(record))
    click.echo(f"trained on {report.train_captions} captions ({report.val_captions} held out) "
               f"in {report.seconds:.0f} s; kept epoch {report.best_epoch}")


@main.command("eval")
@_with_pairs
@index_option
@click.option("--recall-k", type=int, default=100, show_default=True, help="Stage-1 shortlist size.")
@device_option
@json_option
@_fail_cleanly
def eval_command(pairs, images_root, split, index_dir, recall_k, device, as_json):
    """Measure text-to-image and image-to-text recall on PAIRS, with and without reranking.

    \b
    Example:
      vtsearch eval data/test.jsonl --json
    """
    from .evaluate import evaluate
    from .index import Index
    from .pairs import load_pairs

    loaded = load_pairs(pairs, images_root, split)
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        report = evaluate(index, loaded, recall_k, progress=_TqdmProgress("evaluating"))
    if report.missing:
        click.echo(f"{len(report.missing)} images of PAIRS are not in the index; left out", err=True)
    if as_json:
        _print_json(report.to_dict())
        return
    click.echo(f"text -> image, {report.n_queries} queries, shortlist {recall_k}"
               f"{'' if report.reranker_trained else ' (reranker untrained)'}")
    click.echo(f"{'':>10}  {'R@1':>6}  {'R@5':>6}  {'R@10':>6}")
    for name, values in (("stage 1", report.stage1), ("reranked", report.reranked)):
        click.echo(f"{name:>10}  " + "  ".join(f"{values[f'R@{k}']:>6.3f}" for k in (1, 5, 10)))
    click.echo(f"recall ceiling {report.recall_ceiling:.3f}; median latency "
               + ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in report.latency_ms.items()))
    reverse = report.image_to_text
    click.echo(f"image -> text, {reverse['n_images']} images, {reverse['candidates']} candidate texts "
               f"({reverse['candidate_source']})")
    for name in ("stage1", "reranked"):
        click.echo(f"{name.replace('stage1', 'stage 1'):>10}  "
                   + "  ".join(f"{reverse[name][f'R@{k}']:>6.3f}" for k in (1, 5, 10)))


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
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Origins allowed to call the clip-retrieval routes from a browser [default: any]; "
                   "'none' allows none.")
@device_option
@_fail_cleanly
def serve_command(index_dirs, host, port, workers, max_upload_mb, max_upload_pixels, concurrency, queue,
                  thumbnail_cache_mb, cors_origins, device):
    """Serve indexes over HTTP: a web page to search and look, a JSON API under /api,
    and clip-retrieval's back-end routes (/knn-service, /metadata, /indices-list).

    \b
    Examples:
      vtsearch serve                      # then open http://127.0.0.1:1234
      vtsearch serve --index indexes/photos --index indexes/products --port 8080
    """
    from .server import ServerSettings, is_loopback, serve

    origins = () if cors_origins == ("none",) else (tuple(cors_origins) or ("*",))
    settings = ServerSettings(max_upload_bytes=int(max_upload_mb * 2**20), max_upload_pixels=max_upload_pixels,
                              concurrency=concurrency, queue=queue, cors_origins=origins,
                              thumbnail_cache_bytes=thumbnail_cache_mb * 2**20)
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}: other machines can search these indexes and see their "
                   "images and file paths; vtsearch has no authentication (put it behind a proxy that has)",
                   err=True)
    serve([str(d) for d in index_dirs] or [str(default_index_dir())], host=host, port=port, workers=workers,
          device=device, settings=settings)


@main.command("info")
@index_option
@json_option
@_fail_cleanly
def info_command(index_dir, as_json):
    """Show what an index holds: counts, encoder, ANN and dates.

    \b
    Example:
      vtsearch info --json
    """
    from .index import Index

    with Index.open(index_dir or default_index_dir(), device="cpu") as index:
        info = index.info().to_dict()
    if as_json:
        _print_json(info)
        return
    encoder = info["encoder"]
    rows = [
        ("index", info["path"]),
        ("catalog", info["catalog"]),
        ("images", info["images"]),
        ("errors", info["errors"]),
        ("texts", info["texts"]),
        ("encoder", f"{encoder['model']}" + (f" ({encoder['pretrained']})" if encoder["pretrained"] else "")),
        ("embed dim", encoder["embed_dim"]),
        ("ann", f"{info['ann']['factory']} ({info['ann']['metric']}), {info['ann_vectors']} vectors"
                + (f", lists on disk in {info['ann']['data_file']}" if info["ann"].get("on_disk")
                   and info["ann"].get("data_file") else "")),
        ("regions", _describe_regions(info["regions"])),
        ("reranker", _describe_reranker(info["reranker"])),
        ("vtsearch", info["vtsearch_version"]),
    ]
    for name, value in rows:
        click.echo(f"{name:>10}  {value}")


def _describe_regions(regions: dict | None) -> str:
    if not regions:
        return "none (this encoder has no region tokens: no reranking)"
    grid, dim = regions["grid"], regions["dim"]
    if not regions["stored"]:
        return f"{grid}x{grid}x{dim}, computed per query (--no-regions)"
    return f"{grid}x{grid}x{dim} fp16, {regions['bytes_per_image']} bytes per image"


def _describe_reranker(reranker: dict) -> str:
    if not reranker:
        return "untrained (results in stage-1 order; see vtsearch train-reranker)"
    val = reranker.get("val", {})
    return (f"trained on {reranker.get('pairs')} captions, w = {val.get('w', 0):.3g}, "
            f"validation top-1 {val.get('val_stage1_top1', 0):.3f} -> {val.get('val_reranked_top1', 0):.3f}")


@main.command("remove")
@click.argument("paths", nargs=-1, required=True)
@index_option
@json_option
@_fail_cleanly
def remove_command(paths, index_dir, as_json):
    """Remove PATHS (files, or everything under folders) from the index.

    The files on disk are not touched; they need not exist any more.

    \b
    Example:
      vtsearch remove ~/Pictures/2019/drafts
    """
    from .index import Index

    with Index.open(index_dir or default_index_dir(), device="cpu") as index:
        summary = index.remove(paths)
    if as_json:
        _print_json(summary.to_dict())
        return
    click.echo(f"removed {len(summary.removed)} files from the index")
    for path in summary.not_indexed:
        click.echo(f"  nothing indexed at {path}", err=True)


@main.group("texts")
def texts_group():
    """The index's text collection, which vtsearch match ranks for an image.

    \b
    Example:
      vtsearch texts add product_titles.csv --column title
    """


@texts_group.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--column", default="text", show_default=True, help="CSV/TSV: the column holding the text.")
@index_option
@device_option
@json_option
@_fail_cleanly
def texts_add_command(file, column, index_dir, device, as_json):
    """Add the texts in FILE: one per line (.txt), JSON Lines with a "text" field and
    optional "id" and metadata (.jsonl), or CSV/TSV with a header (.csv, .tsv).

    Texts already in the collection are skipped.

    \b
    Example:
      vtsearch texts add captions.jsonl
    """
    from .index import Index
    from .texts import read_texts

    records = read_texts(file, column)
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        summary = index.add_texts(records)
        total = index.catalog.text_count()
    if as_json:
        _print_json({**summary.to_dict(), "texts": total})
        return
    click.echo(f"added {summary.added} texts ({summary.duplicates} already there); the collection holds {total}")
    if summary.longer_than_context:
        click.echo(f"note: {summary.longer_than_context} texts are longer than the model's context; "
                   "they are matched on their first tokens", err=True)


@texts_group.command("list")
@click.option("--limit", type=click.IntRange(0), default=None, help="At most this many.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@index_option
@json_option
@_fail_cleanly
def texts_list_command(limit, offset, index_dir, as_json):
    """List the collection's texts with their ids.

    \b
    Example:
      vtsearch texts list --limit 20
    """
    from .index import Index

    with Index.open(index_dir or default_index_dir(), device="cpu") as index:
        rows = index.texts(limit=limit, offset=offset)
    if as_json:
        _print_json([row.to_dict() for row in rows])
        return
    for row in rows:
        click.echo(f"{row.id}\t{row.key or ''}\t{row.text}")


@texts_group.command("remove")
@click.option("--id", "ids", type=int, multiple=True, help="A text's id (repeatable).")
@click.option("--text", "texts", multiple=True, help="A text, exactly (repeatable).")
@click.option("--key", "keys", multiple=True, help="A text's own id from the added file (repeatable).")
@index_option
@json_option
@_fail_cleanly
def texts_remove_command(ids, texts, keys, index_dir, as_json):
    """Remove texts from the collection by id, exact text or key.

    \b
    Example:
      vtsearch texts remove --id 17 --text "an old caption"
    """
    from .index import Index

    if not (ids or texts or keys):
        raise click.UsageError("name texts to remove with --id, --text or --key")
    with Index.open(index_dir or default_index_dir(), device="cpu") as index:
        removed = index.remove_texts(ids, texts, keys)
    if as_json:
        _print_json({"removed": removed})
        return
    click.echo(f"removed {removed} texts")


@main.command("match")
@click.argument("image")
@index_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of texts.")
@click.option("--recall-k", type=int, default=100, show_default=True,
              help="Stage-1 shortlist size that the reranker reorders.")
@click.option("--no-rerank", is_flag=True, help="Stage 1 only: skip the fusion scorer.")
@click.option("--label", "labels", multiple=True, help="Match against this text instead of the collection (repeatable).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Match against the texts in this file (formats as texts add).")
@device_option
@json_option
@_fail_cleanly
def match_command(image, index_dir, k, recall_k, no_rerank, labels, labels_file, device, as_json):
    """Rank texts for IMAGE (a file, or an indexed image's path or id): the index's text
    collection, or ad-hoc --label texts (zero-shot classification).

    \b
    Examples:
      vtsearch match holiday.jpg -k 5
      vtsearch match 17 --label cat --label dog --label "a bowl of fruit" --json
    """
    from .index import Index
    from .texts import read_texts

    candidates = list(labels) + ([r.text for r in read_texts(labels_file)] if labels_file else [])
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        response = index.match(image, k=k, recall_k=recall_k, rerank=not no_rerank,
                               labels=candidates or None)
    if as_json:
        _print_json({"image": response.image, "reranked": response.reranked, "timings_ms": response.timings_ms,
                     "results": [result.to_dict() for result in response.results]})
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'stage 1':>7}  text")
    for result in response.results:
        click.echo(f"{result.rank:>4}  {result.score:>8.4f}  {result.stage1_rank:>7}  {result.text}")


@main.command("rebuild")
@index_option
@click.option("--on-disk/--in-memory", default=None,
              help="From now on build the IVF index from shards whose lists are merged into a "
                   "memory-mapped file (for indexes larger than memory), or in memory "
                   "[default: as before; in memory for a new index].")
@device_option
@json_option
@_fail_cleanly
def rebuild_command(index_dir, on_disk, device, as_json):
    """Retrain the FAISS index from the catalog for the collection's current size.

    Exact search below 50,000 images, an IVF index with 4-bit codes above, its search
    settings calibrated to 0.95 recall@10. `vtsearch index` does this by itself
    when the collection crosses the threshold or grows tenfold; searches keep using the
    old index until the new one is swapped in. An index on disk is merged anew after
    each `vtsearch index` or `remove` run (it is never changed in place).

    \b
    Example:
      vtsearch rebuild --index indexes/photos
      vtsearch rebuild --on-disk --index indexes/laion
    """
    import time

    from .index import Index

    started = time.perf_counter()
    with Index.open(index_dir or default_index_dir(), device=device) as index:
        config = index.rebuild(on_disk)
        vectors = len(index.ann)
    seconds = time.perf_counter() - started
    if as_json:
        _print_json({"ann": config.to_dict(), "vectors": vectors, "seconds": round(seconds, 3)})
        return
    recall = f", recall@10 {config.calibrated_recall:.3f}" if config.calibrated_recall is not None else ""
    settings = f" (nprobe {config.nprobe}, k_factor {config.k_factor}{recall})" if not config.exact else ""
    where = f", lists on disk in {config.data_file}" if config.on_disk and not config.exact else ""
    click.echo(f"rebuilt {config.factory}{settings} over {vectors} vectors in {seconds:.1f} s{where}")


@main.command("check")
@click.option("--repair", is_flag=True,
              help="Fix what was found: rebuild ann.faiss, cut torn region rows, mark lost images "
                   "for re-encoding.")
@index_option
@json_option
@_fail_cleanly
def check_command(repair, index_dir, as_json):
    """Check that the catalog, the FAISS index and the region store agree.

    Exits with status 1 when problems remain (after --repair: when they could not be
    fixed).

    \b
    Example:
      vtsearch check --repair
    """
    from .index import Index

    with Index.open(index_dir or default_index_dir(), device="cpu", rebuild_stale=False) as index:
        report = index.check(repair=repair)
        remaining = index.check() if repair and report.repaired else report
    if as_json:
        _print_json({**report.to_dict(), "ok_after_repair": remaining.ok})
    else:
        click.echo(f"{report.images} images, {report.ann_vectors} FAISS vectors, "
                   f"{report.region_rows} region rows ({report.dead_region_rows} unused"
                   + (f", {report.torn_region_bytes} bytes of a torn row" if report.torn_region_bytes else "")
                   + ")")
        for problem in report.problems:
            click.echo(f"  problem ({problem.part}): {problem.message}")
        for action in report.repaired:
            click.echo(f"  repaired: {action}")
        click.echo("ok" if remaining.ok else
                   "problems remain" + ("" if repair else " (vtsearch check --repair fixes drift)"))
    if not remaining.ok:
        sys.exit(EXIT_ERROR)


@main.command("errors")
@index_option
@json_option
@_fail_cleanly
def errors_command(index_dir, as_json):
    """List the files that could not be indexed, with the reason.

    \b
    Example:
      vtsearch errors --json
    """
    from .index import Index

    with Index.open(index_dir or default_index_dir(), device="cpu") as index:
        records = index.errors()
    if as_json:
        _print_json([record.to_dict() for record in records])
        return
    if not records:
        click.echo("no errors")
        return
    for record in records:
        click.echo(f"{record.path}\t{record.reason}")


if __name__ == "__main__":
    main()
