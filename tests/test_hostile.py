"""Every hostile or odd file of the generated corpus is indexed or skipped with its reason,
in one run with real decode worker processes, and the run never stops."""

import os
import signal
import time

import numpy as np
from hostile import CHANGES, VANISHES, write_hostile_corpus
from PIL import Image

import vtsearch.build.plan as ingest_module
from conftest import CountingEncoder
from vtsearch import Index, IngestOptions
from vtsearch.config import DecodeConfig
from vtsearch.decode import decode_batches, limit_aspect
from vtsearch.records import DecodedImage, DecodeFailure, ScannedFile


def test_hostile_corpus(tmp_path, tiny_encoder, monkeypatch):
    folder = tmp_path / "hostile"
    expected = write_hostile_corpus(folder)
    real_scan = ingest_module.scan

    def scan_then_disturb(paths):
        report = real_scan(paths)
        (folder / VANISHES).unlink()
        Image.new("RGB", (33, 22), "teal").save(folder / CHANGES)
        os.utime(folder / CHANGES, ns=(10**18, 10**18))
        return report

    monkeypatch.setattr(ingest_module, "scan", scan_then_disturb)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        started = time.perf_counter()
        summary = index.add([folder], IngestOptions(batch_size=4, workers=2))
        assert time.perf_counter() - started < 60  # the 30000-pixel strip and the bomb are cheap
        monkeypatch.setattr(ingest_module, "scan", real_scan)

        errors = {record.path: record.reason for record in index.errors()}
        paths = [str(folder / name) for name in expected]
        entries = index.catalog.entries(paths)
        rows = index.catalog.rows([entry.id for entry in entries.values()])
        indexed = {row.path: row for row in rows.values() if row.path not in errors}
        for name, expect in expected.items():
            path = str(folder / name)
            if expect.indexed:
                assert path in indexed, (name, errors.get(path))
                if expect.size:
                    assert (indexed[path].width, indexed[path].height) == expect.size, name
            else:
                assert errors.get(path, "").startswith(expect.reason), (name, errors.get(path))
        assert len(indexed) == sum(expect.indexed for expect in expected.values())  # no duplicates
        assert len(index.ann) == len(indexed)
        assert ("unreadable: broken symbolic link" in
                [r.reason for r in summary.skipped if r.path.endswith("dangling link.jpg")])

        changed = entries[str(folder / CHANGES)]
        stat = os.stat(folder / CHANGES)
        assert (changed.size, changed.mtime_ns) == (stat.st_size, stat.st_mtime_ns)  # what was read

    counting = CountingEncoder(tiny_encoder)
    with Index.open(tmp_path / "index", encoder=counting) as index:
        again = index.add([folder], IngestOptions(batch_size=4, workers=0))
        assert counting.images_encoded == 0 and again.unchanged == len(indexed)
        assert len(index.search_text("a red square", k=100)) == len(indexed)
        assert index.check().ok


def test_extreme_strips_are_cut_around_the_centre_without_changing_what_the_model_sees(tiny_encoder):
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (300, 3000, 3), dtype=np.uint8))
    cut = limit_aspect(strip, 3.0)
    assert cut.size == (900, 300)
    np.testing.assert_allclose(tiny_encoder.preprocess(cut).numpy(),
                               tiny_encoder.preprocess(strip).numpy(), atol=0.05)
    assert limit_aspect(strip, None) is strip
    tall = Image.new("RGB", (2, 100))
    assert limit_aspect(tall, 3.0).size == (2, 6)
    assert tiny_encoder.decode_config().max_aspect == 3.0


def hang_in_c(image):
    """A decoder stuck in C: no Python signal handler can run (SIGALRM blocked), so only
    killing the process ends it."""
    if image.size == (9, 9):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return np.asarray(image)


def test_a_file_that_decodes_too_slowly_is_skipped(tmp_path):
    files = []
    for number, size in enumerate([(8, 8), (9, 9), (10, 10), (11, 11)]):
        path = tmp_path / f"{number}.png"
        Image.new("RGB", size).save(path)
        stat = os.stat(path)
        files.append(ScannedFile(str(path), stat.st_size, stat.st_mtime_ns))
    started = time.perf_counter()
    outcomes = [outcome for batch in decode_batches(files, DecodeConfig(timeout_s=1.0), hang_in_c, 2, 2)
                for outcome in batch]
    assert time.perf_counter() - started < 10
    assert [outcome.source.path for outcome in outcomes] == [file.path for file in files]
    assert isinstance(outcomes[1], DecodeFailure) and outcomes[1].reason.startswith("too slow"), outcomes[1]
    assert all(isinstance(outcomes[i], DecodedImage) for i in (0, 2, 3))
