import sqlite3
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import inspect, text

from vtsearch.config import AnnConfig
from vtsearch.errors import IndexFormatError
from vtsearch.query.texts import TextRecord
from vtsearch.records import DecodedImage, DecodeFailure, ScannedFile
from vtsearch.store.ann import AnnIndex
from vtsearch.store.catalog import SCHEMA_VERSION, Catalog, migrations, texts_table
from vtsearch.store.catalog.connect import connect


def unit_rows(count, dim=16, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def decoded(path):
    import torch

    return DecodedImage(ScannedFile(path, 10, 1), torch.zeros(3, 2, 2), 2, 2, "PNG", "h" + path, 10)


def test_ann_ids_are_catalog_ids_and_padding_is_dropped():
    ann = AnnIndex.empty(16, AnnConfig())
    vectors = unit_rows(5)
    ann.add(np.array([10, 20, 30, 40, 50]), vectors)
    [hits] = ann.search(vectors[2], k=100)
    assert len(hits) == 5  # k past the size: no -1 padding
    assert hits[0][0] == 30 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert ann.remove([30]) == 1
    assert 30 not in [i for i, _ in ann.search(vectors[2], k=10)[0]]
    assert sorted(ann.ids().tolist()) == [10, 20, 40, 50]


def test_ann_matches_brute_force_and_round_trips(tmp_path):
    vectors, queries = unit_rows(300), unit_rows(7, seed=1)
    ids = np.arange(1000, 1300)
    ann = AnnIndex.empty(16, AnnConfig())
    ann.add(ids, vectors)
    ann.save(tmp_path / "ann.faiss")
    loaded = AnnIndex.load(tmp_path / "ann.faiss", AnnConfig())
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    for row, hits in enumerate(loaded.search(queries, 10)):
        assert [i for i, _ in hits] == (ids[expected[row]]).tolist()


def test_damaged_ann_file_is_a_format_error(tmp_path):
    (tmp_path / "ann.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="cannot read"):
        AnnIndex.load(tmp_path / "ann.faiss", AnnConfig())


def test_catalog_store_update_and_errors(catalog_location):
    catalog = Catalog.open(catalog_location, create=True)
    images = [decoded("/a.png"), decoded("/b.png")]
    ids, failed = catalog.store(images, unit_rows(2), [], {})
    assert failed == [] and len(set(ids)) == 2
    known = catalog.entries(["/a.png", "/b.png", "/c.png"])
    assert set(known) == {"/a.png", "/b.png"}
    # /a.png becomes undecodable: its row keeps its id, loses its embedding
    failure = DecodeFailure(ScannedFile("/a.png", 3, 2), "not an image: x")
    again, failed = catalog.store([], np.empty((0, 16), np.float32), [failure], known)
    assert again == [] and failed == [known["/a.png"].id]
    assert catalog.count("indexed") == 1 and catalog.count("error") == 1
    assert [(e.path, e.reason) for e in catalog.errors()] == [("/a.png", "not an image: x")]
    [(chunk_ids, chunk_vectors)] = list(catalog.embeddings(16))
    assert chunk_ids.tolist() == [known["/b.png"].id] and chunk_vectors.shape == (1, 16)


def test_ids_are_never_reused(catalog_location):
    catalog = Catalog.open(catalog_location, create=True)
    [first], _ = catalog.store([decoded("/a.png")], unit_rows(1), [], {})
    with catalog.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM images")
    [second], _ = catalog.store([decoded("/b.png")], unit_rows(1), [], {})
    assert second > first


def test_newer_schema_and_corrupt_files_are_clear_errors(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog.open(path, create=True).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(IndexFormatError, match="newer"):
        Catalog.open(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexFormatError, match="junk.sqlite"):
        Catalog.open(junk)


def schema_one_catalog(location, with_texts_table):
    """A catalog as schema 1 left it: the texts table only when texts had been added
    (older catalogs) or the catalog was made while texts were new, no texts revision."""
    catalog = Catalog.open(location, create=True)
    ids, _ = catalog.store([decoded("/a.png")], unit_rows(1), [], {})
    with catalog.engine.begin() as connection:
        if not with_texts_table:
            texts_table.drop(connection)
        connection.execute(text("DELETE FROM meta WHERE key = 'texts_revision'"))
        connection.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    catalog.close()
    return ids


def recorded_version(catalog):
    with catalog.engine.connect() as connection:
        return int(connection.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'")))


@pytest.mark.parametrize("with_texts_table", [False, True])
def test_a_schema_one_catalog_is_upgraded_in_place(catalog_location, with_texts_table):
    assert SCHEMA_VERSION == 3
    [image_id] = schema_one_catalog(catalog_location, with_texts_table)
    catalog = Catalog.open(catalog_location)  # opened as an existing index opens it
    assert recorded_version(catalog) == 3
    assert catalog.text_count() == 0 and catalog.texts_revision() == 0
    assert catalog.indexed_ids().tolist() == [image_id]  # the images are untouched
    [added] = catalog.add_texts([TextRecord("a cat")], unit_rows(1))
    assert [row.text for row in catalog.text_rows([added])] == ["a cat"] and catalog.texts_revision() == 1
    catalog.close()
    catalog = Catalog.open(catalog_location)  # nothing left to do
    assert recorded_version(catalog) == 3 and catalog.text_count() == 1
    catalog.close()


def test_a_failed_upgrade_leaves_the_catalog_as_it_was(catalog_location, monkeypatch):
    schema_one_catalog(catalog_location, with_texts_table=False)
    upgrade_to_two = migrations.UPGRADES[1]

    def add_texts_then_fail(connection):
        upgrade_to_two(connection)
        raise RuntimeError("killed mid-upgrade")

    monkeypatch.setitem(migrations.UPGRADES, 1, add_texts_then_fail)
    with pytest.raises(RuntimeError, match="mid-upgrade"):
        Catalog.open(catalog_location)
    monkeypatch.undo()
    _, engine = connect(catalog_location, create=False)  # an engine, and no upgrade
    with engine.connect() as connection:
        version = connection.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'"))
        assert version == "1" and not inspect(connection).has_table("texts")
    engine.dispose()
    catalog = Catalog.open(catalog_location)
    assert recorded_version(catalog) == 3 and catalog.text_count() == 0
    catalog.close()


def test_a_schema_two_catalog_gets_its_backslash_paths_escaped(catalog_location):
    """Schema 2 stored paths as they are; 3 escapes the backslash (and bytes that are not
    UTF-8). The upgrade rewrites the paths holding one, even when an old path's new form
    is another old path as it was (``/p/a\\b`` becomes ``/p/a\\x5cb``, which exists)."""
    catalog = Catalog.open(catalog_location, create=True)
    old = ["/p/a\\b.png", "/p/a\\x5cb.png", "/p/plain.png", "/p/é\\\\.png"]
    ids, _ = catalog.store([decoded(path) for path in old], unit_rows(4), [], {})
    with catalog.engine.begin() as connection:  # as schema 2 stored them: unescaped
        for row_id, path in zip(ids, old):
            connection.execute(text("UPDATE images SET path = :path WHERE id = :id"), {"path": path, "id": row_id})
        connection.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
    catalog.close()
    catalog = Catalog.open(catalog_location)
    assert recorded_version(catalog) == 3
    assert {path: entry.id for path, entry in catalog.under("/p").items()} == dict(zip(old, ids))
    with catalog.engine.connect() as connection:
        stored = set(connection.scalars(text("SELECT path FROM images")))
    assert stored == {"/p/a\\x5cb.png", "/p/a\\x5cx5cb.png", "/p/plain.png", "/p/é\\x5c\\x5c.png"}
    catalog.close()


def test_paths_that_are_not_utf8_are_kept_on_either_backend(catalog_location):
    import os

    from vtsearch.filters import SearchFilter

    names = [b"/p/caf\xe9.png", b"/p/\xff/x.png", b"/p/a\\b.png", "/p/café.png".encode()]
    paths = [os.fsdecode(name) for name in names]
    catalog = Catalog.open(catalog_location, create=True)
    images = [replace(decoded(path), content_hash=f"{number:032x}") for number, path in enumerate(paths)]
    ids, _ = catalog.store(images, unit_rows(4), [], {})
    assert [os.fsencode(row.path) for row in catalog.rows(ids).values()] == names
    assert set(catalog.entries(paths)) == set(paths) and set(catalog.under("/p")) == set(paths)
    assert list(catalog.under(os.fsdecode(b"/p/\xff"))) == [paths[1]]
    assert catalog.filtered_ids(SearchFilter(glob=os.fsdecode(b"caf\xe9*"))).tolist() == [ids[0]]
    assert catalog.filtered_ids(SearchFilter(glob="a\\b.*")).tolist() == [ids[2]]
    assert catalog.filtered_ids(SearchFilter(path_prefix=os.fsdecode(b"/p/\xff"))).tolist() == [ids[1]]
    catalog.move([(ids[0], os.fsdecode(b"/q/\xe9.png"), 10, 2)])
    assert [os.fsencode(e.path) for e in catalog.errors()] == []
    assert list(catalog.under("/q")) == [os.fsdecode(b"/q/\xe9.png")]
    catalog.close()
