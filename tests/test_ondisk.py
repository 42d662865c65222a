"""The IVF index built from shards merged on disk: the same answers as one built in
memory, memory-mapped lists that never change in place, and an index that keeps them."""

import shutil

import faiss
import numpy as np
import pytest

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.config import AnnConfig
from vtsearch.store import ondisk
from vtsearch.store.ann import AnnIndex

DIM = 16


def unit_rows(count, seed=0):
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def chunked(vectors, ids, size=250):
    return lambda: ((ids[i:i + size], vectors[i:i + size]) for i in range(0, len(ids), size))


def test_merged_shards_answer_like_one_index_in_memory(tmp_path):
    vectors, ids = unit_rows(3000), np.arange(10, 3010, dtype=np.int64)
    config = AnnConfig(factory="IVF16,SQ4", auto=False, nprobe=4)
    index, merged_config, timings = ondisk.build(tmp_path, DIM, config, chunked(vectors, ids), vectors[:1000],
                                                 shard_size=400, jobs=2)
    assert timings["shards"] == 6 and index.ntotal == 3000
    assert merged_config.on_disk and (tmp_path / merged_config.data_file).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [merged_config.data_file]  # shards cleaned up

    memory = AnnIndex.empty(DIM, config)
    memory.train(vectors[:1000])
    memory.add(ids, vectors)
    AnnIndex(index, merged_config, writable=False).save(tmp_path / "ann.faiss")
    loaded = AnnIndex.load(tmp_path / "ann.faiss", merged_config)
    assert sorted(loaded.ids().tolist()) == ids.tolist()
    queries = unit_rows(20, seed=1)
    assert loaded.search(queries, 10) == memory.search(queries, 10)
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.add(ids[:1], vectors[:1])

    # the folder moves: the list data is found beside ann.faiss
    moved = tmp_path.parent / "moved"
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(tmp_path)
    assert AnnIndex.load(moved / "ann.faiss", merged_config).search(queries, 10) == memory.search(queries, 10)
    (moved / merged_config.data_file).unlink()
    with pytest.raises(Exception, match="missing"):
        AnnIndex.load(moved / "ann.faiss", merged_config)


def test_an_index_on_disk_follows_adds_and_removals(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 40)
    make_images(tmp_path / "more", 20, seed=3)
    config = AnnConfig(factory="IVF8,SQ4", auto=False)
    with Index.create(tmp_path / "index", encoder=tiny_encoder, ann_config=config) as index:
        index.add([tmp_path / "photos"], IngestOptions(workers=0))
        before = [r.id for r in index.search_text("a red circle", k=5, rerank=False)]
        built = index.rebuild(on_disk=True)
        assert built.on_disk and not index.ann.writable
        first_file = built.data_file
        assert [r.id for r in index.search_text("a red circle", k=5, rerank=False)] == before
        index.add([tmp_path / "more"], IngestOptions(workers=0))
        assert len(index.ann) == 60 and index.ann.config.data_file != first_file
        index.remove([tmp_path / "more"])
        assert len(index.ann) == 40 and index.check().ok
        # the previous generation stays for readers that are opening it, until the next write
        names = [p.name for p in ondisk.data_files(tmp_path / "index")]
        assert index.ann.config.data_file in names and first_file not in names and len(names) == 2
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as reader:  # a new process's view
        assert reader.ann.config.on_disk and len(reader.ann) == 40
        assert [r.id for r in reader.search_text("a red circle", k=5, rerank=False)] == before
        assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(reader.ann.cpu_index).invlists),
                          faiss.OnDiskInvertedLists)
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as index:
        assert not index.rebuild(on_disk=False).on_disk and index.ann.writable
        index.add([tmp_path / "more"], IngestOptions(workers=0))  # the first write drops the file
        assert ondisk.data_files(tmp_path / "index") == []
