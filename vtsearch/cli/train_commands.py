"""Commands that teach and measure the reranker: train-reranker and eval."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .app import device_option, fail_cleanly, index_option, json_option, main, open_index, pairs_options
from .render import TqdmProgress, epoch_line, format_timings, note, print_json, print_recall_header, print_recalls

if TYPE_CHECKING:
    from ..train.evaluate import EvalReport
    from ..train.loop import TrainReport


@main.command("train-reranker")
@pairs_options
@index_option
@click.option("--objective", type=click.Choice(["caption", "match"]), default="caption", show_default=True,
              help="caption: learn to say each caption from its image (a signal per word); match: rank each "
                   "caption's image above hard negatives (listwise).")
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--negatives", type=click.IntRange(1), default=15, show_default=True,
              help="Match objective: hard negatives per caption, mined from the index's stage-1 neighbours.")
@click.option("--text-negatives", type=click.IntRange(0), default=8, show_default=True,
              help="Wrong texts per image (word-swapped captions, nearest captions): the match objective's "
                   "image -> text term, and its validation; 0 turns them off.")
@click.option("--swaps", type=click.IntRange(0), default=1, show_default=True,
              help="Caption objective, second half of the epochs: word-swapped variants of each caption "
                   "(red <-> blue, cube <-> ball, or both) that its image must score below the caption; "
                   "0 turns them off.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Captions per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate (after a short warm-up).")
@click.option("--width", type=click.IntRange(8), default=128, show_default=True, help="Scorer width.")
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True, help="Scorer blocks.")
@click.option("--region-layers", type=click.IntRange(0), default=1, show_default=True,
              help="Self-attention blocks among an image's regions before the text reads them "
                   "(0: the text reads the regions as they are stored).")
@click.option("--dropout", type=click.FloatRange(0.0, 0.9), default=0.0, show_default=True,
              help="Dropout in the scorer's attention and MLPs while it trains (for few captions).")
@click.option("--patience", type=click.IntRange(1), default=5, show_default=True,
              help="Stop after this many epochs in a row without a better validation top-1 or loss.")
@device_option
@json_option
@fail_cleanly
def train_reranker_command(pairs, images_root, split, index_dir, objective, epochs, negatives, text_negatives,
                           swaps, batch_size, lr, width, layers, region_layers, dropout, patience, device, as_json):
    """Train the fusion scorer on PAIRS, captioned images that are in the index.

    PAIRS is JSON Lines ({"image": path, "caption": text}), COCO captions JSON, or a
    Karpathy split JSON. The weights are saved into the index and kept as it grows.

    \b
    Example:
      vtsearch train-reranker data/train.jsonl --epochs 6
    """
    from ..train.loop import TrainOptions, train_reranker
    from ..train.pairs import load_pairs

    loaded = load_pairs(pairs, images_root, split)
    options = TrainOptions(objective=objective, epochs=epochs, negatives=negatives, text_negatives=text_negatives,
                           swaps=swaps, batch_size=batch_size, lr=lr, width=width, layers=layers,
                           region_layers=region_layers, dropout=dropout, patience=patience, device=device)
    progress = TqdmProgress("training")
    with open_index(index_dir, device) as index:
        reranker, report = train_reranker(index, loaded, options, progress=progress,
                                          on_epoch=None if as_json else progress.note_epoch,
                                          on_plan=None if as_json else progress.note_plan)
        index.save_reranker(reranker, progress=TqdmProgress("reading the images for the scorer"))
    _print_training(report, as_json)


def _print_training(report: TrainReport, as_json: bool) -> None:
    if report.missing:
        note(f"{len(report.missing)} images of PAIRS are not in the index "
             f"(e.g. {report.missing[0]}); their pairs were left out")
    if as_json:
        print_json(report.to_dict())
        return
    for record in report.history:
        click.echo(epoch_line(record))
    click.echo(f"trained on {report.train_captions} captions ({report.val_captions} held out) "
               f"in {report.seconds:.0f} s; kept epoch {report.best_epoch}")


@main.command("eval")
@pairs_options
@index_option
@click.option("--recall-k", type=int, default=100, show_default=True, help="Stage-1 shortlist size.")
@device_option
@json_option
@fail_cleanly
def eval_command(pairs, images_root, split, index_dir, recall_k, device, as_json):
    """Measure text-to-image and image-to-text recall on PAIRS, with and without reranking.

    \b
    Example:
      vtsearch eval data/test.jsonl --json
    """
    from ..train.evaluate import evaluate
    from ..train.pairs import load_pairs

    loaded = load_pairs(pairs, images_root, split)
    with open_index(index_dir, device) as index:
        report = evaluate(index, loaded, recall_k, progress=TqdmProgress("evaluating"))
    _print_evaluation(report, as_json)


def _print_evaluation(report: EvalReport, as_json: bool) -> None:
    if report.missing:
        note(f"{len(report.missing)} images of PAIRS are not in the index; left out")
    if as_json:
        print_json(report.to_dict())
        return
    click.echo(f"text -> image, {report.n_queries} queries, shortlist {report.recall_k}"
               f"{'' if report.reranker_trained else ' (reranker untrained)'}")
    print_recall_header()
    print_recalls("stage 1", report.stage1)
    print_recalls("reranked", report.reranked)
    click.echo(f"recall ceiling {report.recall_ceiling:.3f}; median latency {format_timings(report.latency_ms)}")
    reverse = report.image_to_text
    if reverse is None:
        return
    click.echo(f"image -> text, {reverse.n_images} images, {reverse.candidates} candidate texts "
               f"({reverse.candidate_source})")
    print_recalls("stage 1", reverse.stage1)
    print_recalls("reranked", reverse.reranked)
