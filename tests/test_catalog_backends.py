"""The catalog's behaviour on both backends (``catalog_location``: a SQLite file and a
PostgreSQL database), and a whole index whose catalog lives on the server."""

import json
import multiprocessing
import os

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.errors import IndexExistsError, IndexLockedError, QueryError, VtsearchError
from vtsearch.filters import SearchFilter
from vtsearch.query.texts import TextRecord
from vtsearch.records import DecodedImage, DecodeFailure, ScannedFile
from vtsearch.store.catalog import Catalog, glob_regex, public_url

DIM = 8


def image(path, width=2, height=2, fmt="PNG", mtime_ns=1):
    """A decoded image as the catalog sees it (it stores no pixels: none are made)."""
    return DecodedImage(ScannedFile(path, 10, mtime_ns), None, width, height, fmt, "h" + path, 10)


def vectors(count, seed=0):
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def store(catalog, paths, **kwargs):
    ids, _ = catalog.store([image(path, **kwargs) for path in paths], vectors(len(paths)), [], {})
    return dict(zip(paths, ids))


def test_folder_ranges_compare_bytes_not_locale(catalog_location):
    """``under`` and ``--path-prefix`` are range queries: on PostgreSQL they need the byte
    collation, or '/a/b c' and '/a/B' sort into the middle of '/a/b/'."""
    catalog = Catalog.open(catalog_location, create=True)
    paths = ["/a/b", "/a/b/1.png", "/a/b/sub/2.png", "/a/b c/3.png", "/a/b0/4.png", "/a/B/5.png",
             "/a/b-x/6.png", "/a/bé/7.png", "/a/b/é.png"]
    ids = store(catalog, paths)
    assert set(catalog.under("/a/b")) == {"/a/b", "/a/b/1.png", "/a/b/sub/2.png", "/a/b/é.png"}
    assert set(catalog.under("/a/b/")) == set(catalog.under("/a/b"))
    found = catalog.filtered_ids(SearchFilter(path_prefix="/a/b"))
    assert found.tolist() == sorted(ids[p] for p in ("/a/b", "/a/b/1.png", "/a/b/sub/2.png", "/a/b/é.png"))


def test_filters_and_glob_mean_the_same_on_both(catalog_location):
    catalog = Catalog.open(catalog_location, create=True)
    ids = store(catalog, ["/p/cat.png", "/p/Cat.PNG", "/p/dog.png", "/p/x/cat2.png", "/p/a.b[1].png"])
    wide = store(catalog, ["/p/wide.jpg"], width=4000, height=100, fmt="JPEG", mtime_ns=2_000_000_000_000_000_000)

    def found(**conditions):
        return set(catalog.filtered_ids(SearchFilter(**conditions)).tolist())

    assert found(glob="cat*.png") == {ids["/p/cat.png"], ids["/p/x/cat2.png"]}  # case matters
    assert found(glob="?at.png") == {ids["/p/cat.png"]}
    assert found(glob="[cd]*.png") == {ids["/p/cat.png"], ids["/p/dog.png"], ids["/p/x/cat2.png"]}
    assert found(glob="/p/[^c]*.png") == {ids["/p/dog.png"], ids["/p/a.b[1].png"], ids["/p/x/cat2.png"]}
    assert found(glob="a.b?1?.png") == {ids["/p/a.b[1].png"]}
    assert found(glob="/p/x/*") == {ids["/p/x/cat2.png"]}
    assert found(formats=("JPEG",)) == found(min_width=1000) == {wide["/p/wide.jpg"]}
    # a 64-bit mtime (the year 2033 in ns) and 64-bit sizes fit on both
    assert found(modified_after=1.9e9) == {wide["/p/wide.jpg"]}


@pytest.mark.parametrize("pattern, expected", [
    ("*.png", r"^.*\.png$"), ("a?b", "^a.b$"), ("[^a-c]x", "^[^a-c]x$"), ("100%", r"^100\%$"),
])
def test_glob_becomes_an_anchored_regular_expression(pattern, expected):
    assert glob_regex(pattern) == expected


def test_moves_touches_removals_texts_and_revisions(catalog_location):
    catalog = Catalog.open(catalog_location, create=True)
    ids = store(catalog, ["/m/a.png", "/m/b.png", "/m/c.png"])
    revision = catalog.revision()
    catalog.move([(ids["/m/a.png"], "/n/a.png", 10, 5)])
    catalog.touch([(ids["/m/b.png"], 11, 6)])
    assert catalog.remove([ids["/m/c.png"]]) == [ids["/m/c.png"]]
    assert catalog.revision() == revision + 3
    entries = catalog.entries(["/n/a.png", "/m/b.png", "/m/c.png"])
    assert entries["/n/a.png"].id == ids["/m/a.png"] and (entries["/m/b.png"].size, entries["/m/b.png"].mtime_ns) == (11, 6)
    assert "/m/c.png" not in entries
    stored = catalog.vectors([ids["/m/a.png"]], DIM)  # the moved row kept its vector
    assert stored.shape == (1, DIM) and np.isclose(np.linalg.norm(stored), 1.0)
    # failures keep their row and lose the embedding
    failure = DecodeFailure(ScannedFile("/m/b.png", 3, 2), "not an image: x")
    _, failed = catalog.store([], np.empty((0, DIM), np.float32), [failure], entries)
    assert failed == [ids["/m/b.png"]] and [e.path for e in catalog.errors()] == ["/m/b.png"]
    # the text collection: deduplicated, with its own revision
    texts_revision = catalog.texts_revision()
    added = catalog.add_texts([TextRecord("a cat", "k1", {"lang": "en"}), TextRecord("a dog"),
                               TextRecord("a cat")], vectors(3))
    assert len(added) == 2 and catalog.add_texts([TextRecord("a dog")], vectors(1)) == []
    assert catalog.texts_revision() == texts_revision + 1
    assert [(row.text, row.key, row.meta) for row in catalog.text_rows(added)] == [
        ("a cat", "k1", {"lang": "en"}), ("a dog", None, {})]
    assert catalog.remove_texts(keys=["k1"]) == 1 and catalog.text_count() == 1
    assert catalog.integrity_problems() == []


def _write_rows(location, worker, count, batch):
    catalog = Catalog.open(location)
    for start in range(0, count, batch):
        paths = [f"/w{worker}/{n}.png" for n in range(start, start + batch)]
        catalog.store([image(path) for path in paths], vectors(batch, seed=worker), [], {})
    catalog.add_texts([TextRecord(f"text {worker} {n}") for n in range(batch)], vectors(batch))
    catalog.close()


def test_concurrent_writers_from_several_processes(catalog_location):
    """Four processes commit at once: every row lands once, ids are unique, and every
    transaction's revision bump counts (no read-then-write race)."""
    Catalog.open(catalog_location, create=True).close()
    workers, count, batch = 4, 60, 6
    context = multiprocessing.get_context("fork")  # the children touch neither torch nor a parent connection
    processes = [context.Process(target=_write_rows, args=(catalog_location, w, count, batch))
                 for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    catalog = Catalog.open(catalog_location)
    ids = catalog.indexed_ids()
    assert len(ids) == len(set(ids.tolist())) == workers * count
    assert catalog.revision() == workers * count // batch
    assert catalog.texts_revision() == workers and catalog.text_count() == workers * batch


def test_server_url_checks(postgres_url, monkeypatch):
    url = make_url(postgres_url)
    assert url.password and url.password not in public_url(postgres_url)
    assert make_url(public_url(postgres_url)) == url._replace(password=None)
    # the password from the environment when the URL has none
    monkeypatch.setenv("VTSEARCH_CATALOG_PASSWORD", url.password)
    Catalog.open(public_url(postgres_url), create=True).close()
    monkeypatch.setenv("VTSEARCH_CATALOG_PASSWORD", "wrong")
    with pytest.raises(VtsearchError, match="cannot be reached.*password") as caught:
        Catalog.open(public_url(postgres_url))
    assert "wrong" not in str(caught.value)
    with pytest.raises(VtsearchError, match="cannot be reached"):
        Catalog.open(url.set(port=1).render_as_string(hide_password=False))
    with pytest.raises(VtsearchError, match="names a mysql database"):
        Catalog.open("mysql://u@h/db")


def test_an_index_with_its_catalog_on_the_server(tmp_path, tiny_encoder, postgres_url):
    make_images(tmp_path / "photos", 12)
    with Index.create(tmp_path / "index", encoder=tiny_encoder, catalog_url=postgres_url) as index:
        summary = index.add([tmp_path / "photos"], IngestOptions(workers=0, batch_size=5))
        assert summary.indexed == 12
    assert not (tmp_path / "index" / "catalog.sqlite").exists()
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["catalog"] == public_url(postgres_url)
    assert make_url(postgres_url).password not in (tmp_path / "index" / "manifest.json").read_text()

    os.environ["VTSEARCH_CATALOG_PASSWORD"] = make_url(postgres_url).password
    try:
        with Index.open(tmp_path / "index", encoder=tiny_encoder) as index:
            assert len(index.search_text("a red square", k=5)) == 5
            first = sorted(tmp_path.glob("photos/*"))[0]
            first.unlink()
            assert index.add([tmp_path / "photos"], IngestOptions(workers=0)).removed == 1
            assert index.check().ok and len(index.ann) == 11
            # a writer on another host (the same index folder, seen on shared storage):
            # the server's advisory lock stops it where a flock on NFS might not
            index.store.lock.acquire()
            other = Index.open(tmp_path / "index", encoder=tiny_encoder)
            other.store.lock.path = tmp_path / "elsewhere.lock"  # a flock that is not shared
            with pytest.raises(IndexLockedError, match="another host"):
                other.add([tmp_path / "photos"], IngestOptions(workers=0))
            index.store.lock.release()
            other.add([tmp_path / "photos"], IngestOptions(workers=0))
            other.close()
        # a second index on the same database is refused
        with pytest.raises(IndexExistsError, match="database of its own"):
            Index.create(tmp_path / "second", encoder=tiny_encoder, catalog_url=postgres_url)
        with pytest.raises(IndexExistsError, match="keeps its catalog in"):
            Index.open_or_create(tmp_path / "index", encoder=tiny_encoder,
                                 catalog_url=str(tmp_path / "other.sqlite"))
    finally:
        del os.environ["VTSEARCH_CATALOG_PASSWORD"]


@pytest.mark.parametrize("pattern", ["[z-a]*", "*" * 4000 + "x", "[[:alpha:]]*"])
def test_a_pattern_a_backend_cannot_take_is_the_callers_error(catalog_location, pattern):
    """SQLite matches nothing where PostgreSQL's regular expressions refuse the pattern:
    either way the catalog is not called damaged."""
    catalog = Catalog.open(catalog_location, create=True)
    store(catalog, ["/p/a.png"])
    try:
        assert catalog.filtered_ids(SearchFilter(glob=pattern)).tolist() == []
    except QueryError as refused:
        assert catalog.on_server and "cannot be used" in str(refused)
