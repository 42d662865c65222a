"""Commands that ask an index: search, match, and the text collection match ranks (texts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..filters import SearchFilter
from .app import (
    device_option, fail_cleanly, index_option, json_option, main, no_rerank_option, open_index,
)
from .render import format_timings, note, print_json, print_ranking

if TYPE_CHECKING:
    from ..records import MatchResponse, SearchResponse

shortlist_option = click.option(
    "--recall-k", type=int, default=None,
    help="Stage-1 shortlist size that the reranker reorders [default: 100; for a CoCa index, whose "
         "decoder (ViT-B-32) costs 7-18 ms per candidate on a 2-core CPU: 20 on a CPU, 100 on a GPU].",
)


@main.command("search")
@click.argument("query", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False),
              help="Search by example: the images most like this one.")
@index_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results.")
@shortlist_option
@no_rerank_option
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
@fail_cleanly
def search_command(query, image_path, index_dir, k, recall_k, no_rerank, path_prefix, glob, formats,
                   min_width, min_height, modified_after, modified_before, deduplicate, device, as_json):
    """Find the images that best match QUERY text (or --image FILE).

    Text queries are reranked by the index's fusion scorer (see train-reranker), or in an
    index built with a CoCa model by CoCa's own text decoder, which needs no training.

    \b
    Examples:
      vtsearch search "a dog on a beach"
      vtsearch search "a red cube left of a blue ball" --recall-k 200 --json
      vtsearch search --image holiday.jpg -k 5 --json
      vtsearch search "a harbour at night" --path-prefix ~/Pictures/2023 --format jpeg
    """
    if (query is None) == (image_path is None):
        raise click.UsageError("give either a QUERY text or --image FILE (not both)")
    filters = SearchFilter.from_dict({
        "path_prefix": path_prefix, "glob": glob, "formats": formats, "min_width": min_width,
        "min_height": min_height, "modified_after": modified_after, "modified_before": modified_before,
    })
    with open_index(index_dir, device) as index:
        response = index.query(query, image=image_path, k=k, recall_k=recall_k, rerank=not no_rerank,
                               filters=filters, deduplicate=deduplicate)
    _print_search(response, image_path if image_path is not None else query, as_json, filters.active)


def _print_search(response: SearchResponse, query: str, as_json: bool, filtered: bool) -> None:
    if as_json:
        print_json({"query": query, "reranked": response.reranked, "timings_ms": response.timings_ms,
                    "notices": response.notices,
                    "results": [result.to_dict() for result in response.results]})
        return
    for notice in response.notices:
        note(f"note: {notice}")
    if not response.results:
        click.echo("no results (no indexed image passes the filters)" if filtered else
                   "no results (the index is empty)")
        return
    print_ranking(response.results, "path")
    note(f"({'reranked' if response.reranked else 'stage 1 only'}: {format_timings(response.timings_ms)})")


@main.command("match")
@click.argument("image")
@index_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of texts.")
@shortlist_option
@no_rerank_option
@click.option("--label", "labels", multiple=True, help="Match against this text instead of the collection (repeatable).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Match against the texts in this file (formats as texts add).")
@device_option
@json_option
@fail_cleanly
def match_command(image, index_dir, k, recall_k, no_rerank, labels, labels_file, device, as_json):
    """Rank texts for IMAGE (a file, or an indexed image's path or id): the index's text
    collection, or ad-hoc --label texts (zero-shot classification).

    \b
    Examples:
      vtsearch match holiday.jpg -k 5
      vtsearch match 17 --label cat --label dog --label "a bowl of fruit" --json
    """
    from ..query.texts import read_texts

    candidates = list(labels) + ([record.text for record in read_texts(labels_file)] if labels_file else [])
    with open_index(index_dir, device) as index:
        response = index.match(image, k=k, recall_k=recall_k, rerank=not no_rerank,
                               labels=candidates or None)
    _print_match(response, as_json)


def _print_match(response: MatchResponse, as_json: bool) -> None:
    if as_json:
        print_json({"image": response.image, "reranked": response.reranked, "timings_ms": response.timings_ms,
                    "results": [result.to_dict() for result in response.results]})
        return
    print_ranking(response.results, "text")


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
@fail_cleanly
def texts_add_command(file, column, index_dir, device, as_json):
    """Add the texts in FILE: one per line (.txt), JSON Lines with a "text" field and
    optional "id" and metadata (.jsonl), or CSV/TSV with a header (.csv, .tsv).

    Texts already in the collection are skipped.

    \b
    Example:
      vtsearch texts add captions.jsonl
    """
    from ..query.texts import read_texts

    records = read_texts(file, column)
    with open_index(index_dir, device) as index:
        summary = index.add_texts(records)
        total = index.text_count()
    if as_json:
        print_json({**summary.to_dict(), "texts": total})
        return
    click.echo(f"added {summary.added} texts ({summary.duplicates} already there); the collection holds {total}")
    if summary.longer_than_context:
        note(f"note: {summary.longer_than_context} texts are longer than the model's context; "
             "they are matched on their first tokens")


@texts_group.command("list")
@click.option("--limit", type=click.IntRange(0), default=None, help="At most this many.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@index_option
@json_option
@fail_cleanly
def texts_list_command(limit, offset, index_dir, as_json):
    """List the collection's texts with their ids.

    \b
    Example:
      vtsearch texts list --limit 20
    """
    with open_index(index_dir) as index:
        rows = index.texts(limit=limit, offset=offset)
    if as_json:
        print_json([row.to_dict() for row in rows])
        return
    for row in rows:
        click.echo(f"{row.id}\t{row.key or ''}\t{row.text}")


@texts_group.command("remove")
@click.option("--id", "ids", type=int, multiple=True, help="A text's id (repeatable).")
@click.option("--text", "texts", multiple=True, help="A text, exactly (repeatable).")
@click.option("--key", "keys", multiple=True, help="A text's own id from the added file (repeatable).")
@index_option
@json_option
@fail_cleanly
def texts_remove_command(ids, texts, keys, index_dir, as_json):
    """Remove texts from the collection by id, exact text or key.

    \b
    Example:
      vtsearch texts remove --id 17 --text "an old caption"
    """
    if not (ids or texts or keys):
        raise click.UsageError("name texts to remove with --id, --text or --key")
    with open_index(index_dir) as index:
        removed = index.remove_texts(ids, texts, keys)
    if as_json:
        print_json({"removed": removed})
        return
    click.echo(f"removed {removed} texts")
