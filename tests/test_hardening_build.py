"""Issue 16, the build path, the catalog, texts and the CLI: what a hostile folder, odd
input and a killed writer found (file names that are not UTF-8, input reported as damage,
tracebacks, a lock kept alive by decode workers, CSV texts, a misleading message, a model
load that silenced the root logger)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.cli import main
from vtsearch.errors import IndexLockedError, QueryError, VtsearchError
from vtsearch.filters import SearchFilter
from vtsearch.query.texts import read_texts
from vtsearch.store.catalog import Catalog
from vtsearch.store.catalog.paths import path_from_stored, stored_path
from vtsearch.store.lock import WriterLock
from vtsearch.train.pairs import load_pairs

OPTIONS = IngestOptions(workers=0, batch_size=4)
LATIN1 = b"caf\xe9.jpg"  # café.jpg as a Latin-1 system names it: not UTF-8


def run(*args):
    return CliRunner().invoke(main, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args],
                              catch_exceptions=False)


# 7: a file name that is not UTF-8

@pytest.mark.parametrize("name", [LATIN1, b"a\\b.png", b"x\\x41.png", b"\xff\xfe", b"\xed\xa0\x80.png",
                                  "é ü 漢字.png".encode(), b"plain.png"])
def test_stored_paths_round_trip_and_keep_folder_prefixes(name):
    path = os.fsdecode(b"/photos/\xe9t\xe9/" + name)
    stored = stored_path(path)
    stored.encode("utf-8")  # any text column takes it
    assert os.fsencode(path_from_stored(stored)) == b"/photos/\xe9t\xe9/" + name
    assert stored.startswith(stored_path(os.fsdecode(b"/photos/\xe9t\xe9")) + "/")
    assert stored_path("/a/b.png") == "/a/b.png"  # a UTF-8 path without a backslash is kept as it is


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """Three images, two of them under names that are not UTF-8 or hold a backslash."""
    folder = tmp_path / "photos"
    [first, second, third] = make_images(folder, 3)
    os.rename(first, os.path.join(os.fsencode(folder), LATIN1))
    os.mkdir(os.path.join(os.fsencode(folder), b"d\xff"))
    os.rename(second, os.path.join(os.fsencode(folder), b"d\xff", b"a\\b.png"))
    return folder


def test_a_name_that_is_not_utf8_is_indexed_found_and_printed(odd_folder, tmp_path, tiny_model_dir):
    index = tmp_path / "index"
    result = run("index", odd_folder, "--index", index, "--model", f"local-dir:{tiny_model_dir}",
                 "--workers", 0, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 3
    on_disk = {os.fsencode(path) for path in odd_folder.rglob("*") if path.is_file()}

    found = json.loads(run("search", "x", "--index", index, "-k", 3, "--json").stdout)["results"]
    assert {os.fsencode(r["path"]) for r in found} == on_disk  # each opens the very file
    table = run("search", "x", "--index", index, "-k", 3)
    assert table.exit_code == 0 and os.path.join(os.fsencode(odd_folder), LATIN1) in table.stdout_bytes

    latin1 = os.path.join(os.fsencode(odd_folder), LATIN1)
    by_glob = json.loads(run("search", "x", "--index", index, "--glob", b"caf\xe9*", "--json").stdout)["results"]
    assert [os.fsencode(r["path"]) for r in by_glob] == [latin1]
    for pattern, names in (("*x*", set()), ("caf?.jpg", {LATIN1}), ("*\\*", {b"a\\b.png"})):
        hits = json.loads(run("search", "x", "--index", index, "--glob", pattern, "--json").stdout)["results"]
        assert {os.path.basename(os.fsencode(r["path"])) for r in hits} == names, pattern  # real names, not escapes
    folder = os.path.join(os.fsencode(odd_folder), b"d\xff")
    under = json.loads(run("search", "x", "--index", index, "--path-prefix", folder, "--json").stdout)["results"]
    assert [os.fsencode(r["path"]) for r in under] == [os.path.join(folder, b"a\\b.png")]
    assert run("match", latin1, "--index", index, "--label", "a cat").exit_code == 0

    with sqlite3.connect(index / "catalog.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT path FROM images")}
    assert os.fsdecode(odd_folder) + "/caf\\xe9.jpg" in stored and any(p.endswith("/a\\x5cb.png") for p in stored)
    again = json.loads(run("index", odd_folder, "--index", index, "--workers", 0, "--json").stdout)
    assert again["unchanged"] == 3 and again["indexed"] == 0  # the same rows are found again
    removed = json.loads(run("remove", folder, "--index", index, "--json").stdout)
    assert removed["removed"] == 1


def test_undecodable_names_are_skipped_and_listed_without_failing(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    (Path(os.fsdecode(os.path.join(os.fsencode(folder), b"bad\xe9.png")))).write_bytes(b"not an image")
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        summary = index.add([os.fsencode(folder)], OPTIONS)  # bytes paths are taken too
        assert summary.indexed == 2 and [os.fsencode(e.path) for e in summary.skipped] == [
            os.path.join(os.fsencode(folder), b"bad\xe9.png")]
    listed = run("errors", "--index", tmp_path / "index")
    assert listed.exit_code == 0 and b"bad\xe9.png" in listed.stdout_bytes
    records = json.loads(run("errors", "--index", tmp_path / "index", "--json").stdout)
    assert os.fsencode(records[0]["path"]).endswith(b"/bad\xe9.png")


def test_a_reason_quoting_an_undecodable_name_is_stored(tmp_path):
    from vtsearch.query.texts import check_text_value
    from vtsearch.records import DecodeFailure, ScannedFile

    catalog = Catalog.open(tmp_path / "catalog.sqlite", create=True)
    name = os.fsdecode(b"/p/caf\xe9.png")
    catalog.store([], np.empty((0, 4), np.float32), [DecodeFailure(ScannedFile(name, 1, 1), f"odd: {name!s}")], {})
    [record] = catalog.errors()
    assert os.fsencode(record.path) == b"/p/caf\xe9.png" and record.reason == "odd: /p/caf\\udce9.png"
    with pytest.raises(VtsearchError, match="not valid Unicode"):
        check_text_value("a \ud800 b", "text 1")  # such a text goes into no column


# 8: client input is not damage

def test_a_pattern_sqlite_refuses_is_a_query_error(tmp_path):
    from sqlalchemy import event

    catalog = Catalog.open(tmp_path / "catalog.sqlite", create=True)
    catalog.store([decoded("/p/a.png")], np.ones((1, 4), np.float32), [], {})  # a row to match against
    event.listen(catalog.engine, "connect", lambda connection, _record: connection.setlimit(
        sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50))
    catalog.engine.dispose()  # the next connection gets the lower limit
    with pytest.raises(QueryError, match="cannot be used.*pattern too complex"):
        catalog.filtered_ids(SearchFilter(glob="*" + "a" * 100))
    assert catalog.filtered_ids(SearchFilter(glob="*.png")).tolist() == [1]


def decoded(path):
    """An image as the catalog sees it (no pixels)."""
    from vtsearch.records import DecodedImage, ScannedFile

    return DecodedImage(ScannedFile(path, 10, 1), None, 2, 2, "PNG", "h" + path, 10)


# 10: no tracebacks

def test_ids_past_64_bits_are_simply_absent(tmp_path):
    catalog = Catalog.open(tmp_path / "catalog.sqlite", create=True)
    huge = [10**23, 2**63, -2**64]
    assert catalog.rows(huge) == {} and catalog.text_rows(huge) == [] and catalog.remove_texts(huge) == 0
    assert catalog.vectors(huge, 4).shape == (3, 4)


@pytest.mark.parametrize("line, message", [
    ('{"image": 5, "caption": [1]}', 'line 1: "image" must be a non-empty string, not a JSON number'),
    ('{"image": "a.png", "caption": [1]}', "line 1: a caption must be a non-empty string, not a JSON array"),
    ('{"image": "a.png", "captions": "abc"}', 'line 1: "captions" must be a list of strings'),
    ('{"image": "a.png"}', 'line 1: expected {"image": ..., "caption": ...}'),
])
def test_a_malformed_pairs_line_is_an_error_naming_it(tmp_path, line, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(line + "\n")
    with pytest.raises(VtsearchError, match=None) as refused:
        load_pairs(pairs)
    assert message in str(refused.value)
    result = run("train-reranker", pairs, "--index", tmp_path / "index")
    assert result.exit_code == 1 and "Traceback" not in result.output and message in result.stderr


# 11: a killed writer

HOLDER = r"""
import multiprocessing, sys, time
from pathlib import Path
from vtsearch.store.lock import WriterLock

lock = WriterLock(Path(sys.argv[1]))
lock.acquire()
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
child.start()  # as the decode workers start
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_writers_forked_children_do_not_keep_its_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            WriterLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child still lives...
        killed = time.monotonic()
        lock = WriterLock(tmp_path)
        lock.acquire()  # ...and the lock is free at once
        assert time.monotonic() - killed < 1.0
        lock.release()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_a_forked_child_cannot_release_its_parents_lock(tmp_path):
    import multiprocessing

    lock = WriterLock(tmp_path)
    lock.acquire()
    try:
        child = multiprocessing.get_context("fork").Process(target=lock.release)
        child.start()
        child.join(10)
        assert child.exitcode == 0
        with pytest.raises(IndexLockedError):
            WriterLock(tmp_path).acquire()
    finally:
        lock.release()
    WriterLock(tmp_path).acquire()


def behind(index_dir, tiny_encoder, folder):
    """An index whose catalog moved on after ``ann.faiss`` was saved, as a killed run leaves it."""
    with Index.create(index_dir, encoder=tiny_encoder) as index:
        index.add([folder], OPTIONS)
    catalog = Catalog.open(index_dir / "catalog.sqlite")
    catalog.touch([(1, 10, 10)])  # one more write, and FAISS not saved after it
    catalog.mark_for_reencoding([2], "lost")
    catalog.close()


def test_check_after_a_killed_run_gives_a_notice_not_a_problem(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 4)
    behind(tmp_path / "index", tiny_encoder, tmp_path / "photos")
    result = run("check", "--index", tmp_path / "index")
    assert result.exit_code == 0, result.output
    assert "notice: ann.faiss reflects catalog revision" in result.stdout and "problem" not in result.stdout
    report = json.loads(run("check", "--index", tmp_path / "index", "--repair", "--json").stdout)
    assert report["ok"] and report["notices"] and any("rebuilt ann.faiss" in r for r in report["repaired"])
    with Index.open(tmp_path / "index", encoder=tiny_encoder, rebuild_stale=False) as index:
        after = index.check()
        assert after.ok and not after.notices and len(index.ann) == 3


def test_a_behind_file_holding_an_id_twice_is_still_a_problem(tmp_path, tiny_encoder):
    from vtsearch.store.ann import AnnIndex

    make_images(tmp_path / "photos", 4)
    behind(tmp_path / "index", tiny_encoder, tmp_path / "photos")
    with Index.open(tmp_path / "index", encoder=tiny_encoder, rebuild_stale=False) as index:
        config = index.manifest.ann
    ann = AnnIndex.load(tmp_path / "index" / "ann.faiss", config)
    ann.add(np.array([3], dtype=np.int64), np.eye(1, 64, dtype=np.float32))
    ann.save(tmp_path / "index" / "ann.faiss")
    result = run("check", "--index", tmp_path / "index")
    assert result.exit_code == 1 and "held more than once" in result.stdout


# 12: CSV texts

@pytest.mark.parametrize("content, message", [
    ('text\n"a red square\na blue circle\na green triangle\n', ":2: a quoted field that starts on this line"),
    ('id,text\n1,a cat\n2,"a dog\n3,a "big" fish\n', ":3: a quoted field that starts on this line"),
    ("text,id\na cat,1\n\na dog,2\na fish,1\n", "the id '1' is given on line 2 and again on line 5"),
])
def test_csv_texts_refuse_open_quotes_and_repeated_ids(tmp_path, content, message):
    path = tmp_path / "texts.csv"
    path.write_text(content)
    with pytest.raises(VtsearchError) as refused:
        read_texts(path)
    assert message in str(refused.value)


def test_csv_texts_drop_a_byte_order_mark_and_jsonl_refuses_repeated_ids(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,id\na cat,1\n\"a dog, sleeping\",2\n".encode("utf-8-sig"))
    assert [(r.text, r.key) for r in read_texts(path)] == [("a cat", "1"), ("a dog, sleeping", "2")]
    lines = tmp_path / "texts.jsonl"
    lines.write_text('{"text": "a", "id": 7}\n{"text": "b", "id": "7"}\n')
    with pytest.raises(VtsearchError, match="given on line 1 and again on line 2"):
        read_texts(lines)
    multiline = tmp_path / "multi.csv"
    multiline.write_text('text\n"two\nlines"\nnext\n')
    assert [r.text for r in read_texts(multiline)] == ["two\nlines", "next"]  # a closed quote may span lines


# 13: a filter that keeps nothing

def test_a_filter_that_keeps_nothing_says_so(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 2)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
    result = run("search", "x", "--index", tmp_path / "index", "--glob", "nothing*")
    assert result.stdout.strip() == "no results (no indexed image passes the filters)"
    result = run("search", "x", "--index", tmp_path / "index", "--glob", "a" * 60_000)
    assert result.exit_code == 1 and "60,000" in result.stderr and "damaged" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# process-wide state

def test_loading_a_model_leaves_the_root_logger_alone(tiny_spec, caplog):
    import open_clip

    from vtsearch.encoder.weights import _quiet_open_clip, load_open_clip

    root = logging.getLogger()
    level, filters = root.level, list(root.filters)
    fake = os.path.join(os.path.dirname(open_clip.__file__), "factory.py")
    from_open_clip = compile("import logging\nlogging.warning('open_clip chatter')", fake, "exec")
    with caplog.at_level(logging.INFO), _quiet_open_clip():
        logging.getLogger("vtsearch.elsewhere").warning("another thread's news")
        logging.warning("the root's own news")
        exec(from_open_clip)
    assert [r.getMessage() for r in caplog.records] == ["another thread's news", "the root's own news"]
    load_open_clip(tiny_spec)
    assert (root.level, root.filters) == (level, filters)


SERVER_HOLDER = r"""
import multiprocessing, sys, time
from pathlib import Path
from vtsearch.store.catalog import Catalog
from vtsearch.store.lock import WriterLock

catalog = Catalog.open(sys.argv[2])
lock = WriterLock(Path(sys.argv[1]), catalog.writer_lock())
lock.acquire()
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
child.start()
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_writers_children_do_not_keep_its_server_lock(tmp_path, postgres_url):
    """On a PostgreSQL catalog the writer also holds an advisory lock on its own connection:
    a forked child must not keep that connection (and the lock) alive either."""
    Catalog.open(postgres_url, create=True).close()
    holder = subprocess.Popen([sys.executable, "-c", SERVER_HOLDER, str(tmp_path), postgres_url],
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    catalog = Catalog.open(postgres_url)
    try:
        assert catalog.writer_lock().held_elsewhere()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child still lives
        deadline = time.monotonic() + 3
        while catalog.writer_lock().held_elsewhere() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not catalog.writer_lock().held_elsewhere()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)
        catalog.close()
