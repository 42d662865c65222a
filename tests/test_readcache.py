"""The images as a trained scorer reads them, kept beside the region store: queries rank
as they would without them, and every writer keeps them in step with the region store."""

import numpy as np
import pytest
import torch

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.fusion import FusionConfig
from vtsearch.store.layout import read_file_name
from vtsearch.query.rerank import Reranker
from vtsearch.store.regions import RegionStore

OPTIONS = IngestOptions(batch_size=8, workers=0)
QUERIES = ["a red thing", "something small and blue", "green and yellow blocks"]


def scorer_for(index: Index, seed: int, weight: float = 0.5) -> Reranker:
    """An untrained scorer that changes the order (w != 0), as train-reranker would save one."""
    config = FusionConfig(text_dim=index.encoder.text_token_dim, region_dim=index.regions.dim,
                          grid=index.regions.grid, prefix=index.regions.prefix,
                          max_tokens=index.encoder.context_length, width=32, region_layers=1, score="caption",
                          vocab=tuple(range(1, 300)), word_dim=index.encoder.word_dim)
    reranker = Reranker.untrained(config, seed=seed)
    with torch.no_grad():
        reranker.scorer.rerank_weight.fill_(weight)
    reranker.trained = {"pairs": 1}
    return reranker


def read_files(index: Index) -> list[str]:
    return sorted(path.name for path in index.path.glob("read-*"))


def kept_rows(index: Index) -> int:
    (name,) = read_files(index)
    return len(RegionStore(index.path / name, index.read_cache.layout))


def assert_ranks_as_without(index: Index, recall_k: int = 30) -> None:
    """Each query's reranked order and scores equal the scorer's over the regions themselves
    (in bfloat16, over the regions as read in float32: what the file keeps, more exact
    than what a bfloat16 query reads)."""
    for text in QUERIES:
        response = index.query(text, k=recall_k, recall_k=recall_k)  # picks up a scorer saved since
        assert response.reranked
        reranker, source = index.reranker, index.region_source
        hits = index.ann.search(index.encoder.encode_texts([text]), recall_k)[0]
        features = index.encoder.encode_text_features([text])
        regions = source.regions([i for i, _ in hits])
        if reranker.precision != "fp32":
            regions = reranker.read_images(regions)
        expected = reranker.rerank(features.tokens[0], features.ids[0], np.array([s for _, s in hits]), regions)
        assert [r.id for r in response.results] == [hits[i][0] for i in expected.order]
        np.testing.assert_allclose([r.score for r in response.results], expected.final[expected.order],
                                   rtol=0, atol=1e-5)


@pytest.fixture
def index(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 40)
    index = Index.create(tmp_path / "index", encoder=tiny_encoder, device="cpu", precision="fp32")
    index.add([tmp_path / "photos"], OPTIONS)
    yield index
    index.close()


def test_a_saved_scorer_keeps_every_image_as_it_reads_them_and_ranks_the_same(index):
    assert read_files(index) == [] and index.info().kept_reads is None  # no trained scorer, nothing kept
    reranker = scorer_for(index, seed=1)
    index.save_reranker(reranker)
    assert read_files(index) == [read_file_name("regions.f16", reranker.digest)]
    assert kept_rows(index) == 40
    assert index.info().kept_reads == {"file": read_files(index)[0], "bytes": 40 * 16 * 32 * 4, "rows": 40}
    kept = index.read_cache.images([3, 7])
    read = reranker.read_images(index.region_source.regions([3, 7]))
    assert kept.shape == (2, 16, 32)  # 4 x 4 regions at the scorer's width
    torch.testing.assert_close(kept.values, read.values, rtol=0, atol=0)
    assert_ranks_as_without(index)


def test_images_added_later_are_read_at_query_time_until_a_writer_tops_the_file_up(index, tmp_path):
    index.save_reranker(scorer_for(index, seed=2))
    (name,) = read_files(index)
    with open(index.path / name, "r+b") as handle:  # as if 10 images came since, and half a row of a killed top-up
        handle.truncate(30 * 16 * 32 * 4 + 100)
    assert kept_rows(index) == 30
    assert_ranks_as_without(index)
    make_images(tmp_path / "more", 5, seed=9)
    index.add([tmp_path / "more"], OPTIONS)
    assert kept_rows(index) == 45 and (index.path / name).stat().st_size == 45 * 16 * 32 * 4
    assert_ranks_as_without(index)


def test_a_new_scorer_or_a_compacted_region_store_gets_a_file_of_its_own(index, tmp_path, monkeypatch):
    index.save_reranker(scorer_for(index, seed=3))
    first = read_files(index)
    second = scorer_for(index, seed=4)
    index.save_reranker(second)
    assert read_files(index) != first and len(read_files(index)) == 1  # the old scorer's file is gone
    assert_ranks_as_without(index)
    read = []
    original = Reranker.read_images
    monkeypatch.setattr(Reranker, "read_images", lambda self, regions: read.append(len(regions)) or original(self, regions))
    index.remove(sorted((tmp_path / "photos").iterdir())[:20])
    index.compact_regions()
    assert read == []  # the compaction carried the kept rows along: nothing was read again
    monkeypatch.undo()
    assert read_files(index) == [read_file_name(index.catalog.regions_file("regions.f16"), second.digest)]
    assert read_files(index)[0] != first[0] and kept_rows(index) == 20
    assert_ranks_as_without(index, recall_k=20)


def test_another_process_reads_with_its_own_scorer_until_it_sees_the_new_one(index):
    index.save_reranker(scorer_for(index, seed=5))
    with Index.open(index.path, device="cpu", encoder=index.encoder, precision="fp32") as reader:
        assert_ranks_as_without(reader)
        index.save_reranker(scorer_for(index, seed=6))  # the reader picks it up on its next query
        assert_ranks_as_without(reader)
        assert reader.read_cache.reranker.digest == index.reranker.digest


def test_a_scorer_that_keeps_stage1_order_keeps_nothing(index):
    index.save_reranker(scorer_for(index, seed=7))
    assert read_files(index)
    index.save_reranker(scorer_for(index, seed=8, weight=0.0))
    assert read_files(index) == [] and index.read_cache is None


def test_a_writer_keeps_the_reads_of_the_scorer_on_disk_not_the_one_it_loaded(index, tmp_path):
    index.save_reranker(scorer_for(index, seed=9))
    with Index.open(index.path, device="cpu", encoder=index.encoder, precision="fp32") as other:
        assert other.query("a red thing", k=3).reranked  # loads scorer 9
        newer = scorer_for(index, seed=10)
        index.save_reranker(newer)
        make_images(tmp_path / "more", 3, seed=11)
        other.add([tmp_path / "more"], OPTIONS)  # tops up newer's file, not scorer 9's
    assert read_files(index) == [read_file_name("regions.f16", newer.digest)] and kept_rows(index) == 43


def test_reads_that_cannot_be_kept_do_not_fail_the_write(index, tmp_path, caplog):
    index.save_reranker(scorer_for(index, seed=12))
    (index.path / "reranker.pt").write_bytes(b"not a checkpoint")
    make_images(tmp_path / "more", 2, seed=13)
    summary = index.add([tmp_path / "more"], OPTIONS)
    assert summary.indexed == 2 and "could not keep the images as the scorer reads them" in caplog.text


def test_explain_scores_an_image_as_a_search_read_it(index):
    """explain reads the kept row too, so the score it shows is the search's for that image
    (under bfloat16 a query's own read of the regions differs in the last digits: here the
    kept row is made to differ more, so that reading the regions instead would show)."""
    index.save_reranker(scorer_for(index, seed=1))
    (name,) = read_files(index)
    rows = np.memmap(index.path / name, dtype=np.float32, mode="r+").reshape(40, 16, 32)
    rows += np.float32(0.05) * np.random.default_rng(0).standard_normal(rows.shape, dtype=np.float32)
    rows.flush()
    del rows
    response = index.query(QUERIES[0], k=5, recall_k=30)
    for result in response.results:
        assert index.explain(result.id, QUERIES[0]).score == pytest.approx(result.score, abs=1e-5)
