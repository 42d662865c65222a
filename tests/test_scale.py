"""ANN choice by size (exact → IVF with 4-bit codes and exact re-scoring), rebuild, lazy loading,
and filtered search checked against brute force over the filtered subset."""

import datetime as dt
import json
import os
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

import vtsearch.store.annbuild as annbuild
from conftest import make_images
from vtsearch import AnnConfig, Index, IngestOptions, QueryError, SearchFilter
from vtsearch.cli import main
from vtsearch.config import Tuning
from vtsearch.store.ann import AnnIndex

OPTIONS = IngestOptions(batch_size=32, workers=0)
DAY = 86_400


def test_choose_config_by_size_and_growth():
    assert annbuild.choose_config(1_000, 512).factory == "IDMap2,Flat"
    assert annbuild.choose_config(100_000, 512).factory == "IVF256,SQ4"
    assert annbuild.choose_config(1_000_000, 512).factory == "IVF1024,SQ4"
    pinned = AnnConfig(factory="IDMap2,Flat", auto=False)
    assert annbuild.choose_config(10**6, 512, pinned) == pinned
    ivf = annbuild.choose_config(100_000, 512)
    assert not annbuild.needs_rebuild(ivf, 900_000, 512)
    assert annbuild.needs_rebuild(ivf, 1_000_000, 512)
    assert annbuild.needs_rebuild(AnnConfig(), annbuild.IVF_THRESHOLD, 512)
    assert not annbuild.needs_rebuild(pinned, 10**7, 512)


def clustered(count, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, 40, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ivf_build_reaches_the_recall_target_and_keeps_add_and_remove(monkeypatch):
    vectors = clustered(4000)
    ids = np.arange(1, 4001, dtype=np.int64)

    def chunks():
        for start in range(0, 4000, 1000):
            yield ids[start:start + 1000], vectors[start:start + 1000]

    rng = np.random.default_rng(1)
    config = annbuild.choose_config(4000, 64, ivf_threshold=1000)
    assert config.factory == "IVF64,SQ4"
    ann = annbuild.build(64, config, 4000, chunks, lambda m: vectors[rng.choice(4000, m, replace=False)],
                         lambda wanted: vectors[np.asarray(wanted) - 1])
    assert ann.config.calibrated_recall >= 0.95 and ann.config.nprobe >= 1 and ann.config.k_factor >= 4
    queries = annbuild.calibration_queries(lambda m: vectors[rng.choice(4000, m, replace=False)], 100, seed=5)
    truth = annbuild.exact_top(queries, chunks(), 10)
    assert annbuild.recall_at_k(ann.search(queries, 10), truth) >= 0.9  # fresh queries
    assert sorted(ann.ids().tolist()) == ids.tolist()
    assert ann.remove([5, 6]) == 2 and len(ann) == 3998
    ann.add(np.array([5]), vectors[4:5])
    assert ann.search(vectors[4:5], 1)[0][0][0] == 5


def indexed_rows(index):
    with sqlite3.connect(index.path / "catalog.sqlite") as db:
        return db.execute(
            "SELECT id, path, format, width, height, mtime_ns FROM images WHERE status = 'indexed'"
        ).fetchall()


def brute_force(index, vector, keep, k):
    """Ids of the top ``k`` rows for which ``keep(row)`` holds, by exact cosine."""
    rows = [row for row in indexed_rows(index) if keep(row)]
    if not rows:
        return []
    ids = [row[0] for row in rows]
    scores = index.catalog.vectors(ids, len(vector)) @ vector
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture
def mixed(tmp_path, tiny_encoder):
    """An index over folders of JPEG/PNG/WebP images of two sizes and several ages."""
    make_images(tmp_path / "photos" / "2023", 18, seed=1)
    make_images(tmp_path / "photos" / "2024", 18, seed=2, size=(120, 90))
    make_images(tmp_path / "photos2", 6, seed=3)
    now = dt.datetime(2024, 6, 1).timestamp()
    for number, path in enumerate(sorted((tmp_path).rglob("image_*"))):
        stamp = now - number * DAY
        os.utime(path, (stamp, stamp))
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([tmp_path / "photos", tmp_path / "photos2"], OPTIONS)
    yield index, tmp_path
    index.close()


FILTERS = [
    ({"path_prefix": "photos/2023"}, lambda r, root: r[1].startswith(str(root / "photos" / "2023") + "/")),
    ({"path_prefix": "photos"}, lambda r, root: r[1].startswith(str(root / "photos") + "/")),  # not photos2
    ({"glob": "*.png"}, lambda r, root: r[1].endswith(".png")),
    ({"glob": "image_001?.*"}, lambda r, root: os.path.basename(r[1]).startswith("image_001")),
    ({"formats": ("jpg", "webp")}, lambda r, root: r[2] in ("JPEG", "WEBP")),
    ({"min_width": 100}, lambda r, root: r[3] >= 100),
    ({"min_width": 100, "min_height": 91}, lambda r, root: False),
    ({"modified_after": "2024-05-20", "modified_before": "2024-05-28T12:00"},
     lambda r, root: dt.datetime(2024, 5, 20).timestamp() * 1e9 <= r[5] < dt.datetime(2024, 5, 28, 12).timestamp() * 1e9),
    ({"path_prefix": "photos/2024", "formats": ("png",), "min_height": 90},
     lambda r, root: "/photos/2024/" in r[1] and r[2] == "PNG"),
]


@pytest.mark.parametrize("number", range(len(FILTERS)))
@pytest.mark.parametrize("exact_limit", [20_000, 0], ids=["exact-subset", "faiss-selector"])
def test_filtered_search_equals_brute_force_on_the_subset(mixed, number, exact_limit, monkeypatch):
    built, root = mixed
    index = Index.open(built.path, encoder=built.encoder, tuning=Tuning(exact_filter_limit=exact_limit))
    given, keep = FILTERS[number]
    given = {**given, **({"path_prefix": str(root / given["path_prefix"])} if "path_prefix" in given else {})}
    conditions = SearchFilter.from_dict(given)
    for query in ("a red square", "blue"):
        vector = index.encoder.encode_texts([query])[0]
        expected = brute_force(index, vector, lambda row: keep(row, root), 7)
        assert [r.id for r in index.search_text(query, k=7, filters=conditions)] == expected
    index.close()


def test_filter_values_are_checked(mixed):
    with pytest.raises(QueryError, match="cannot read 'last week' as a date"):
        SearchFilter.from_dict({"modified_after": "last week"})
    with pytest.raises(QueryError, match="min_width must be a non-negative integer"):
        SearchFilter(min_width=-1)
    assert not SearchFilter().active and SearchFilter(formats=("png",)).active


@pytest.fixture
def small_ivf_threshold(monkeypatch):
    monkeypatch.setenv("VTSEARCH_IVF_THRESHOLD", "120")


def test_index_switches_to_ivf_when_it_grows_and_readers_map_it(tmp_path, tiny_encoder, small_ivf_threshold):
    make_images(tmp_path / "a", 60, size=(24, 24))
    make_images(tmp_path / "b", 100, seed=5, size=(24, 24))
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "a"], OPTIONS)
        assert index.ann.config.exact
        index.add([tmp_path / "b"], OPTIONS)  # 160 ≥ 120: retrained as IVF
        config = index.ann.config
        assert config.factory.startswith("IVF") and config.trained_on == 160
        assert config.calibrated_recall >= config.recall_target
        assert json.loads((tmp_path / "index" / "manifest.json").read_text())["ann"] == config.to_dict()
        vector = index.encoder.encode_texts(["a green circle"])[0]
        expected = brute_force(index, vector, lambda row: True, 10)
        found = [r.id for r in index.search_text("a green circle", k=10)]
        assert len(set(found) & set(expected)) >= 8
        assert index.check().ok

    with Index.open(tmp_path / "index", encoder=tiny_encoder) as reader:
        assert not reader.ann.writable  # memory-mapped
        assert [r.id for r in reader.search_text("a green circle", k=10)] == found
        (tmp_path / "a" / "image_0000.jpg").unlink()
        summary = reader.add([tmp_path / "a"], OPTIONS)  # the writer loads it to change it
        assert summary.removed == 1 and reader.ann.writable and len(reader.ann) == 159
        assert reader.check().ok
        only_b = SearchFilter(path_prefix=str(tmp_path / "b"))
        assert all("/b/" in r.path for r in reader.search_text("x", k=20, filters=only_b))


def test_filtered_search_on_an_ivf_index_keeps_its_recall(tmp_path, tiny_encoder, small_ivf_threshold, monkeypatch):
    make_images(tmp_path / "a", 80, size=(24, 24))
    make_images(tmp_path / "b", 80, seed=5, size=(24, 24))
    monkeypatch.setenv("VTSEARCH_EXACT_FILTER_LIMIT", "0")  # always the FAISS id selector
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path], OPTIONS)
        assert not index.ann.config.exact
        only_b = SearchFilter(path_prefix=str(tmp_path / "b"))
        recalls = []
        for text in ("red", "a blue square", "green and yellow", "dark", "bright"):
            vector = index.encoder.encode_texts([text])[0]
            expected = brute_force(index, vector, lambda row: "/b/" in row[1], 10)
            found = [r.id for r in index.search_text(text, k=10, filters=only_b)]
            recalls.append(len(set(found) & set(expected)) / 10)
        assert np.mean(recalls) >= 0.95, recalls


def test_rebuild_command_and_filtered_cli_search(tmp_path, tiny_model_dir, small_ivf_threshold):
    make_images(tmp_path / "photos", 130, size=(24, 24))
    runner = CliRunner()
    index_dir = str(tmp_path / "index")
    assert runner.invoke(main, ["index", str(tmp_path / "photos"), "--index", index_dir,
                                "--model", f"local-dir:{tiny_model_dir}", "--workers", "0"]).exit_code == 0
    result = runner.invoke(main, ["rebuild", "--index", index_dir, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["vectors"] == 130 and report["ann"]["factory"].startswith("IVF")
    result = runner.invoke(main, ["search", "x", "--index", index_dir, "--format", "png", "--glob",
                                  "image_00*", "-k", "50", "--json"])
    paths = [r["path"] for r in json.loads(result.stdout)["results"]]
    assert paths and all(p.endswith(".png") and "/image_00" in p for p in paths)
    result = runner.invoke(main, ["search", "x", "--index", index_dir, "--modified-after", "yesterday"])
    assert result.exit_code == 1 and "cannot read 'yesterday' as a date" in result.stderr


def test_exact_index_file_is_read_whole(tmp_path):
    ann = AnnIndex.empty(8, AnnConfig())
    ann.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    ann.save(tmp_path / "ann.faiss")
    assert AnnIndex.load(tmp_path / "ann.faiss", AnnConfig(), mmap=True).writable


def test_a_pinned_index_kind_is_kept_and_trained_once_there_is_data(tmp_path, tiny_encoder):
    pinned = AnnConfig(factory="IVF4,SQ4", auto=False)
    make_images(tmp_path / "photos", 30, size=(24, 24))
    with Index.create(tmp_path / "index", encoder=tiny_encoder, ann_config=pinned) as index:
        index.add([tmp_path / "nothing yet"], OPTIONS)
        assert not index.ann.is_trained
        index.add([tmp_path / "photos"], OPTIONS)
        assert index.ann.config.factory == "IVF4,SQ4" and index.ann.is_trained and len(index.ann) == 30
        assert index.ann.config.calibrated_recall is not None
        assert index.check().ok
        assert index.rebuild().factory == "IVF4,SQ4"
