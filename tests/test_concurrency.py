"""Searches keep working while a real ``vtsearch index`` process writes; a second writer
is told who holds the lock; a long-lived reader picks up the writer's results."""

import subprocess
import sys
import time

import pytest

from conftest import make_images
from vtsearch import Index, IndexLockedError, IngestOptions


def test_readers_work_during_a_run_and_see_its_result(tmp_path, tiny_encoder, tiny_model_dir):
    make_images(tmp_path / "first", 5)
    make_images(tmp_path / "photos", 120, size=(40, 40))
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "first"], IngestOptions(workers=0))
    reader = Index.open(tmp_path / "index", encoder=tiny_encoder)  # long-lived, like a server
    assert len(reader.search_text("x", k=1000)) == 5

    writer = subprocess.Popen(
        [sys.executable, "-m", "vtsearch.cli", "index", str(tmp_path / "photos"), "--index",
         str(tmp_path / "index"), "--batch-size", "1", "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    searches, refused = 0, 0
    try:
        while writer.poll() is None and reader.info().images < 10:
            time.sleep(0.01)  # until the writer holds the lock and has committed batches
        while writer.poll() is None:
            found = reader.search_text("a blue square", k=1000)
            assert len(found) >= 5 and len({r.id for r in found}) == len(found)
            with Index.open(tmp_path / "index", encoder=tiny_encoder) as fresh:  # a new process's view
                assert len(fresh.search_text("a blue square", k=3)) == 3
                if refused == 0:
                    with pytest.raises(IndexLockedError, match=f"locked by pid {writer.pid}"):
                        fresh.add([tmp_path / "first"], IngestOptions(workers=0))
                    refused += 1
            searches += 1
            time.sleep(0.05)
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert searches >= 3 and refused >= 1, (searches, refused)
    # the long-lived reader picks up the finished run without being reopened
    assert len(reader.search_text("x", k=1000)) == 125
    assert reader.check().ok
    reader.close()


@pytest.mark.parametrize("reader_first", [True, False])
def test_reader_reloads_only_when_the_saved_index_changed(tmp_path, tiny_encoder, reader_first):
    make_images(tmp_path / "photos", 4)
    Index.create(tmp_path / "index", encoder=tiny_encoder).close()
    reader = Index.open(tmp_path / "index", encoder=tiny_encoder)
    assert reader.refresh() is False  # nothing happened
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as writer:
        writer.add([tmp_path / "photos"], IngestOptions(workers=0))
        assert writer.refresh() is False  # the writer's own state is the newest
    if reader_first:
        assert reader.refresh() is True and len(reader) == 4
    assert len(reader.search_text("x", k=10)) == 4
    assert reader.refresh() is False
    reader.close()
