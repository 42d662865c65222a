"""Commands that build and look after an index: index, remove, rebuild, check, errors, info."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import EncoderSpec, IngestOptions, default_index_dir
from .app import EXIT_ERROR, device_option, fail_cleanly, index_option, json_option, main, open_index, precision_option
from .render import TqdmProgress, print_json, print_rows

if TYPE_CHECKING:
    from ..build.distributed import RayOptions
    from ..config import AnnConfig, RegionLayout
    from ..records import IngestSummary, RerankerSummary
    from ..store.check import CheckReport


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
@precision_option
@json_option
@fail_cleanly
def index_command(paths, index_dir, model, pretrained, batch_size, workers, max_pixels,
                  allow_truncated, keep_missing, no_regions, region_grid, catalog_url, engine, address,
                  ray_workers, num_gpus_per_worker, device, precision, as_json):
    """Index the images under PATHS (files or folders, walked recursively).

    Running it again brings the index up to date with PATHS: new and changed files are
    encoded, moved or renamed files keep their vectors, and files gone from disk are
    removed (unless --keep-missing). Nothing is encoded twice.

    With a CoCa model (--model coca_ViT-B-32 --pretrained laion2b_s13b_b90k) searches are
    reranked by CoCa's own text decoder at once, with no train-reranker; each image then
    keeps its image tower's tokens (77 KB for ViT-B-32) for it.

    \b
    Example:
      vtsearch index ~/Pictures --index indexes/photos
    """
    from ..index import Index

    index_dir = index_dir or default_index_dir()
    spec = EncoderSpec.parse(model, pretrained) if (model or pretrained) else None
    options = IngestOptions(batch_size=batch_size, max_pixels=max_pixels,
                            allow_truncated=allow_truncated, keep_missing=keep_missing,
                            **({} if workers is None else {"workers": workers}))
    ray = _ray_options(engine, address, ray_workers, num_gpus_per_worker)
    with Index.open_or_create(index_dir, spec, device=device, store_regions=not no_regions,
                              region_grid=region_grid, catalog_url=catalog_url, precision=precision) as index:
        summary = index.add(paths, options, progress=TqdmProgress("indexing"), ray=ray)
    _print_ingest_summary(summary, index_dir, as_json)


def _ray_options(engine: str, address: str | None, workers: int | None, gpus_per_worker: float) -> RayOptions | None:
    """The ``--engine ray`` settings, or None for a local run (which takes none of them)."""
    if engine != "ray":
        if address or workers or gpus_per_worker:
            raise click.UsageError("--address, --ray-workers and --num-gpus-per-worker go with --engine ray")
        return None
    from ..build.distributed import RayOptions

    return RayOptions(address=address, workers=workers, num_gpus_per_worker=gpus_per_worker)


def _print_ingest_summary(summary: IngestSummary, index_dir: Path, as_json: bool) -> None:
    if as_json:
        print_json({"index": str(index_dir), **summary.to_dict(),
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


@main.command("remove")
@click.argument("paths", nargs=-1, required=True)
@index_option
@json_option
@fail_cleanly
def remove_command(paths, index_dir, as_json):
    """Remove PATHS (files, or everything under folders) from the index.

    The files on disk are not touched; they need not exist any more.

    \b
    Example:
      vtsearch remove ~/Pictures/2019/drafts
    """
    with open_index(index_dir) as index:
        summary = index.remove(paths)
    if as_json:
        print_json(summary.to_dict())
        return
    click.echo(f"removed {len(summary.removed)} files from the index")
    for path in summary.not_indexed:
        click.echo(f"  nothing indexed at {path}", err=True)


@main.command("rebuild")
@index_option
@click.option("--on-disk/--in-memory", default=None,
              help="From now on build the IVF index from shards whose lists are merged into a "
                   "memory-mapped file (for indexes larger than memory), or in memory "
                   "[default: as before; in memory for a new index].")
@device_option
@json_option
@fail_cleanly
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
    started = time.perf_counter()
    with open_index(index_dir, device) as index:
        config = index.rebuild(on_disk)
        vectors = len(index)
    seconds = time.perf_counter() - started
    if as_json:
        print_json({"ann": config.to_dict(), "vectors": vectors, "seconds": round(seconds, 3)})
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
@fail_cleanly
def check_command(repair, index_dir, as_json):
    """Check that the catalog, the FAISS index and the region store agree.

    Exits with status 1 when problems remain (after --repair: when they could not be
    fixed).

    \b
    Example:
      vtsearch check --repair
    """
    with open_index(index_dir, rebuild_stale=False) as index:  # check sees a stale index as it is
        report = index.check(repair=repair)
        remaining = index.check() if repair and report.repaired else report
    _print_check(report, remaining, repair, as_json)
    if not remaining.ok:
        sys.exit(EXIT_ERROR)


def _print_check(report: CheckReport, remaining: CheckReport, repair: bool, as_json: bool) -> None:
    if as_json:
        print_json({**report.to_dict(), "ok_after_repair": remaining.ok})
        return
    torn = f", {report.torn_region_bytes} bytes of a torn row" if report.torn_region_bytes else ""
    click.echo(f"{report.images} images, {report.ann_vectors} FAISS vectors, "
               f"{report.region_rows} region rows ({report.dead_region_rows} unused{torn})")
    for notice in report.notices:
        click.echo(f"  notice: {notice}")
    for problem in report.problems:
        click.echo(f"  problem ({problem.part}): {problem.message}")
    for action in report.repaired:
        click.echo(f"  repaired: {action}")
    click.echo("ok" if remaining.ok else
               "problems remain" + ("" if repair else " (vtsearch check --repair fixes drift)"))


@main.command("errors")
@index_option
@json_option
@fail_cleanly
def errors_command(index_dir, as_json):
    """List the files that could not be indexed, with the reason.

    \b
    Example:
      vtsearch errors --json
    """
    with open_index(index_dir) as index:
        records = index.errors()
    if as_json:
        print_json([record.to_dict() for record in records])
        return
    if not records:
        click.echo("no errors")
    for record in records:
        click.echo(f"{record.path}\t{record.reason}")


@main.command("info")
@index_option
@json_option
@fail_cleanly
def info_command(index_dir, as_json):
    """Show what an index holds: counts, encoder, ANN and dates.

    \b
    Example:
      vtsearch info --json
    """
    with open_index(index_dir) as index:
        info = index.info()
    if as_json:
        print_json(info.to_dict())
        return
    print_rows([
        ("index", info.path),
        ("catalog", info.catalog),
        ("images", info.images),
        ("errors", info.errors),
        ("texts", info.texts),
        ("encoder", info.encoder.describe()),
        ("embed dim", info.embed_dim),
        ("ann", _describe_ann(info.ann, info.ann_vectors)),
        ("regions", _describe_regions(info.regions)),
        ("reranker", _describe_reranker(info.reranker)),
        *([("kept reads", _describe_kept_reads(info.kept_reads))] if info.kept_reads else []),
        ("vtsearch", info.vtsearch_version),
    ])


def _describe_kept_reads(kept: dict) -> str:
    return (f"{kept['rows']} region rows as the scorer reads them (one per region row, so searches need not "
            f"read them again), {kept['bytes'] / 1e6:.1f} MB in {kept['file']}")


def _describe_ann(ann: AnnConfig, vectors: int) -> str:
    on_disk = f", lists on disk in {ann.data_file}" if ann.on_disk and ann.data_file else ""
    return f"{ann.factory} ({ann.metric}), {vectors} vectors{on_disk}"


def _describe_regions(regions: RegionLayout | None) -> str:
    if regions is None:
        return "none (this encoder has no region tokens: no reranking)"
    shape = f"{regions.prefix}+" if regions.prefix else ""
    shape += f"{regions.grid}x{regions.grid}x{regions.dim}"
    if regions.source == "blocks":
        shape += " (the last block's tokens)"
    if not regions.stored:
        return f"{shape}, computed per query (--no-regions)"
    return f"{shape} fp16, {regions.row_bytes} bytes per image"


def _describe_reranker(reranker: RerankerSummary | None) -> str:
    if reranker is None:
        return "untrained (results in stage-1 order; see vtsearch train-reranker)"
    if reranker.scorer == "coca-decoder":
        config = reranker.config
        prior = config.get("prior", "length")
        if prior == "length":
            prior += f" (each text scored as {config.get('length_tokens', 1.0):g} tokens at its mean per token)"
        return (f"CoCa text decoder (pretrained, no training needed): caption log-likelihood fused with "
                f"stage 1, weight {config.get('weight', 1.0):g}; match prior {prior}; "
                f"default shortlist {config.get('shortlist_cpu', '?')} on a CPU, "
                f"{config.get('shortlist_gpu', '?')} on a GPU")
    val, config = reranker.val, reranker.config
    kind = f"{config.get('score', 'match')} scorer, width {config.get('width', '?')}, {config.get('layers', '?')} blocks"
    if config.get("region_layers"):
        kind += f" and {config['region_layers']} among the regions"
    text_w = f" (ranking texts {val['text_w']:.3g})" if "text_w" in val else ""
    return (f"{kind}, trained on {reranker.pairs} captions, w = {val.get('w', 0):.3g}{text_w}, "
            f"validation top-1 {val.get('val_stage1_top1', 0):.3f} -> {val.get('val_reranked_top1', 0):.3f}")
