"""How the commands print: JSON for programs, aligned tables for people, tqdm bars.

Renderers take the library's records and write them; they decide nothing. Everything a
person reads besides the answer itself (notices, timings, progress) goes to stderr, so
stdout stays the answer alone.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping

import click

from ..records import json_text

RECALL_KS = (1, 5, 10)  # the R@k columns eval prints


def print_json(data: Any) -> None:
    """One line of JSON, UTF-8 (:func:`vtsearch.records.json_text`)."""
    click.echo(json_text(data))


def print_rows(rows: Iterable[tuple[str, Any]]) -> None:
    """``name  value`` lines, names right-aligned (info's layout)."""
    for name, value in rows:
        click.echo(f"{name:>10}  {value}")


def print_ranking(results: Iterable[Any], label: str) -> None:
    """A ranked list (search or match results): rank, score, stage-1 rank and ``label``."""
    click.echo(f"{'rank':>4}  {'score':>8}  {'stage 1':>7}  {label}")
    for result in results:
        click.echo(f"{result.rank:>4}  {result.score:>8.4f}  {result.stage1_rank:>7}  {getattr(result, label)}")


def print_recalls(name: str, recalls: Mapping[str, float]) -> None:
    """One row of an R@1 / R@5 / R@10 table."""
    click.echo(f"{name:>10}  " + "  ".join(f"{recalls[f'R@{k}']:>6.3f}" for k in RECALL_KS))


def print_recall_header() -> None:
    click.echo(f"{'':>10}  " + "  ".join(f"{f'R@{k}':>6}" for k in RECALL_KS))


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_timings(timings_ms: Mapping[str, float]) -> str:
    return ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in timings_ms.items())


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr."""
    click.echo(message, err=True)


def epoch_line(record: Any) -> str:
    """One training epoch (an ``EpochRecord`` of ``TrainReport.history``) on one line."""
    text_top1 = (f", image -> own caption top-1 {record.val_text_top1:.3f}"
                 if record.val_text_top1 is not None else "")
    caption_loss = (f", val caption loss {record.val_caption_loss:.3f}"
                    if record.val_caption_loss is not None else "")
    return (f"epoch {record.epoch}: train loss {record.train_loss:.3f}{caption_loss}, "
            f"val loss {record.val_loss:.3f}, val top-1 {record.val_stage1_top1:.3f} "
            f"-> {record.val_reranked_top1:.3f} (w {record.w:.3f}){text_top1}")


class TqdmProgress:
    """A :class:`vtsearch.progress.Progress` on stderr through tqdm (hidden when stderr is not
    a terminal); tqdm is imported when a bar starts, not with the CLI."""

    def __init__(self, description: str, unit: str = "img"):
        self.description = description
        self.unit = unit
        self.bar: Any = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.description, unit=self.unit, file=sys.stderr,
                        disable=None, dynamic_ncols=True)

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def note_plan(self, plan: Any) -> None:
        """How long the run will take (a ``TrainPlan``), on stderr above the bar."""
        from tqdm import tqdm

        swaps = (f", {plan.swap_step_seconds * 1000:.0f} ms with word swaps in the last {plan.swap_epochs}"
                 if plan.swap_epochs else "")
        tqdm.write(f"training up to {plan.epochs} epochs of {plan.steps_per_epoch} steps: about "
                   f"{format_duration(plan.seconds)} ({plan.step_seconds * 1000:.0f} ms a step{swaps}, "
                   f"{plan.validation_seconds:.1f} s a validation)", file=sys.stderr)

    def note_epoch(self, record: Any) -> None:
        """One line per finished epoch on stderr, above the bar when there is one."""
        from tqdm import tqdm

        tqdm.write(f"{epoch_line(record)} [{record.seconds:.0f} s]", file=sys.stderr)
