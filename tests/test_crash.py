"""Kill a real ``vtsearch index`` process (SIGKILL) at chosen points, then open, search,
check and resume: the catalog, the FAISS index and the region store must agree, nothing
finished may be encoded again, and nothing may be duplicated.

Each run is a real subprocess running the real CLI. A small wrapper kills the process
from inside at an exact point (after a region append, after a catalog commit, just
before a file is renamed into place, ...); one more run is killed from outside at
whatever moment it has reached. The runs start together so their start-up overlaps.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CountingEncoder, make_images
from vtsearch import Index, IndexNotFoundError, IngestOptions
from vtsearch.errors import IndexLockedError
from vtsearch.store.lock import WriterLock

OPTIONS = IngestOptions(batch_size=4, workers=0)

KILLER = r"""
import os, signal, sys
from vtsearch.store import ann, catalog, regions
from vtsearch.cli import main

point, nth = sys.argv[1], int(sys.argv[2])
calls = 0

def kill_after(owner, name):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        global calls
        result = original(*args, **kwargs)
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, wrapped)

def kill_before_replacing(filename):
    original = os.replace
    def wrapped(source, target, *args, **kwargs):
        global calls
        if os.path.basename(target) == filename:
            calls += 1
            if calls == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(source, target, *args, **kwargs)
    os.replace = wrapped

if point == "regions-appended": kill_after(regions.RegionStore, "append")
elif point == "batch-committed": kill_after(catalog.Catalog, "store")
elif point == "moves-committed": kill_after(catalog.Catalog, "move")
elif point == "removals-committed": kill_after(catalog.Catalog, "remove")
elif point == "faiss-saved": kill_after(ann.AnnIndex, "save")
elif point == "regions-copied": kill_after(regions.RegionStore, "copy_rows")
elif point == "regions-relocated": kill_after(catalog.Catalog, "relocate_regions")
elif point.startswith("replacing:"): kill_before_replacing(point.split(":", 1)[1])
sys.argv = ["vtsearch", *sys.argv[3:]]
main()
"""


@dataclass
class Case:
    name: str
    point: str  # where the wrapper kills; "outside": the test kills it
    nth: int = 1
    incremental: str = ""  # "update" or "prune": start from an index, then change the folder
    expected_encodes: int = 0  # images the resumed run must encode
    workers: int = 0
    folder: Path | None = None
    index: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    lock_free_after_kill: bool | None = None  # "outside": could the lock be taken at once?


FRESH = 20  # images in a fresh folder; 5 batches of 4
CASES = [
    Case("creating the index", "replacing:manifest.json", expected_encodes=FRESH),
    Case("regions appended, batch not committed", "regions-appended", nth=3, expected_encodes=FRESH - 8),
    Case("batch committed, FAISS not updated", "batch-committed", nth=3, expected_encodes=FRESH - 12),
    Case("FAISS written, not renamed into place", "replacing:ann.faiss", nth=2, expected_encodes=0),
    Case("FAISS saved, revision not recorded", "faiss-saved", nth=2, expected_encodes=0),
    Case("moves committed", "moves-committed", incremental="update", expected_encodes=7),
    Case("removals committed", "removals-committed", incremental="update", expected_encodes=7),
    Case("first batch of an update committed", "batch-committed", incremental="update", expected_encodes=3),
    Case("compaction copied, not committed", "regions-copied", incremental="prune"),
    Case("compaction committed, old file not deleted", "regions-relocated", incremental="prune"),
    Case("killed from outside mid-run", "outside", workers=2),
]


def change_folder(folder: Path, how: str) -> None:
    """update: 2 moved, 2 deleted, 1 changed, 6 new (16 images, 7 to encode).
    prune: 7 of 12 deleted (the region store is then compacted)."""
    if how == "prune":
        for path in sorted(folder.iterdir())[:7]:
            path.unlink()
        return
    os.rename(folder / "image_0000.jpg", folder / "moved_0000.jpg")
    (folder / "sub").mkdir()
    os.rename(folder / "image_0001.png", folder / "sub" / "image_0001.png")
    (folder / "image_0002.webp").unlink()
    (folder / "image_0003.jpg").unlink()
    Image.new("RGB", (60, 40), "purple").save(folder / "image_0004.png")
    make_images(folder / "new", 6, seed=5)


def launch(case: Case, model_dir: Path) -> None:
    args = [sys.executable, "-c", KILLER, case.point, str(case.nth), "index", str(case.folder),
            "--index", str(case.index), "--model", f"local-dir:{model_dir}",
            "--batch-size", "1" if case.point == "outside" else "4", "--workers", str(case.workers)]
    case.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when_rows_committed(case: Case, rows: int, timeout: float = 120.0) -> None:
    """SIGKILL the run once ``rows`` images are committed (read through SQLite, as a reader)."""
    catalog = case.index / "catalog.sqlite"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and case.process.poll() is None:
        if (case.index / "manifest.json").exists():
            try:
                with sqlite3.connect(catalog, timeout=1) as db:
                    if db.execute("SELECT count(*) FROM images").fetchone()[0] >= rows:
                        case.process.send_signal(signal.SIGKILL)
                        return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.002)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, tiny_model_dir, tiny_encoder):
    for number, case in enumerate(CASES):
        root = tmp_path_factory.mktemp(f"crash{number}")
        case.folder, case.index = root / "photos", root / "index"
        if case.point == "outside":
            make_images(case.folder, 300, size=(40, 40))
        else:
            make_images(case.folder, 12 if case.incremental else FRESH)
        if case.incremental:
            with Index.create(case.index, encoder=tiny_encoder) as index:
                index.add([case.folder], OPTIONS)
            change_folder(case.folder, case.incremental)
    for case in CASES:
        launch(case, tiny_model_dir)
    for case in CASES:
        if case.point == "outside":
            kill_when_rows_committed(case, rows=10)
        case.process.wait(timeout=300)
        if case.point == "outside":  # its decode workers still run: they must not hold the lock
            case.lock_free_after_kill = lock_is_free(case.index)
    return {case.name: case for case in CASES}


def lock_is_free(index_dir: Path) -> bool:
    lock = WriterLock(index_dir)
    try:
        lock.acquire()
    except IndexLockedError:
        return False
    lock.release()
    return True


def agreement(index: Index) -> tuple[list[int], list[int], list[int]]:
    """Indexed ids in the catalog, ids in FAISS, and the region rows the catalog uses."""
    with sqlite3.connect(index.path / "catalog.sqlite") as db:
        rows = db.execute("SELECT id, region_row FROM images WHERE status = 'indexed' ORDER BY id").fetchall()
    return [r[0] for r in rows], sorted(index.ann.ids().tolist()), [r[1] for r in rows]


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_killed_run_leaves_a_usable_index_and_resumes(killed_runs, name, tiny_encoder):
    case = killed_runs[name]
    stderr = case.process.stderr.read().decode(errors="replace")
    assert case.process.returncode == -signal.SIGKILL, stderr[-2000:]
    if case.point == "replacing:manifest.json":  # killed before the index was complete
        with pytest.raises(IndexNotFoundError):
            Index.open(case.index, encoder=tiny_encoder)
        Index.open_or_create(case.index, encoder=tiny_encoder).close()  # what a re-run does
    if case.point == "outside":
        assert case.lock_free_after_kill  # at once, though its decode workers lived on

    with Index.open(case.index, encoder=tiny_encoder, rebuild_stale=False) as index:
        first = index.check()  # the first check, as vtsearch check opens: a FAISS file behind is a notice
        assert first.ok, first.problems

    with Index.open(case.index, encoder=tiny_encoder) as index:  # opens; FAISS rebuilt if behind
        results = index.search_text("a red square", k=5)
        assert len(results) == min(5, index.info().images)
        report = index.check()
        assert report.ok, report.problems
        catalog_ids, faiss_ids, _ = agreement(index)
        assert catalog_ids == faiss_ids
        before = index.info().images

    counting = CountingEncoder(tiny_encoder)
    with Index.open(case.index, encoder=counting) as index:
        summary = index.add([case.folder], OPTIONS)
        files = len([p for p in case.folder.rglob("*") if p.is_file()])
        if case.point == "outside":
            assert 10 <= before < files and counting.images_encoded == files - before
        else:
            assert counting.images_encoded == case.expected_encodes, summary
        assert summary.indexed == counting.images_encoded
        catalog_ids, faiss_ids, region_rows = agreement(index)
        assert index.info().images == files == len(catalog_ids)
        assert catalog_ids == faiss_ids  # the same ids, each once
        assert len(set(region_rows)) == len(region_rows) and None not in region_rows
        assert max(region_rows) < len(index.store.regions.store)
        assert index.check().ok
        assert not list(case.index.glob(".*.tmp"))  # a killed writer's temp files are gone
        assert [p.name for p in case.index.glob("regions*.f16")] == [index.store.regions.store.path.name]
        paths = [r.path for r in index.search_text("x", k=files)]
        assert len(paths) == len(set(paths)) == files
        np.testing.assert_allclose(  # FAISS holds the catalog's vectors
            index.ann.reconstruct(np.array(faiss_ids)), index.catalog.vectors(faiss_ids, 64), atol=1e-6)
