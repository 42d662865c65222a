"""Query input that names no usable image is a clear QueryError, never a 0.0-score search
or a hint to repair an index that is fine."""

import pytest

from vtsearch import Index, IngestOptions, QueryError


@pytest.fixture
def indexed(tmp_path, image_folder, tiny_encoder):
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([image_folder], IngestOptions(workers=0))
        skipped = index.errors()[0].path
        skipped_id = index.catalog.entries([skipped])[skipped].id
        yield index, skipped_id


def test_a_skipped_file_cannot_be_a_query(indexed):
    index, skipped_id = indexed
    for ask in (lambda: index.match(skipped_id, labels=["x"]), lambda: index.query(image=skipped_id),
                lambda: index.explain(skipped_id, "x")):
        with pytest.raises(QueryError, match=f"image {skipped_id} .* was skipped when it was indexed"):
            ask()
    assert index.check().ok


@pytest.mark.parametrize("image_id", [2**63, 99999999999999999999999, -1])
def test_ids_past_the_catalog_range_are_not_found(indexed, image_id):
    index, _ = indexed
    with pytest.raises(QueryError, match=f"no indexed image has id {image_id}"):
        index.match(image_id, labels=["x"])
    with pytest.raises(QueryError, match=f"no indexed image has id {image_id}"):
        index.explain(image_id, "x")


def test_query_vectors_must_be_finite_nonzero_and_as_wide_as_the_index(indexed):
    index, _ = indexed
    width = index.embed_dim
    for vector, message in (([float("nan")] * width, "not a finite number"), ([0.0] * width, "all zeros"),
                            ([1.0] * (width + 1), f"this index's vectors have {width}")):
        with pytest.raises(QueryError, match=message):
            index.search_vector(vector, k=3)
    hit = index.search_text("a red square", k=1)[0]
    huge = index.vectors([hit.id])[0].astype(float) * 1e300
    assert index.search_vector(huge, k=1)[0].id == hit.id  # finite: scaled, not refused


def test_query_text_must_be_valid_unicode(indexed):
    index, _ = indexed
    with pytest.raises(QueryError, match="not valid Unicode"):
        index.query("a red \ud800 square")
