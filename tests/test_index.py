import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import CountingEncoder, make_images
from vtsearch import (
    EncoderSpec, Index, IndexExistsError, IndexLockedError, IndexNotFoundError, IngestOptions, ModelMismatchError,
    QueryError,
)
from vtsearch.build.scan import scan
from vtsearch.config import DecodeConfig
from vtsearch.decode import decode_file
from vtsearch.records import DecodedImage

OPTIONS = IngestOptions(batch_size=8, workers=0)


def brute_force_paths(encoder, folder, query_vector, k):
    """Reference ranking: encode every decodable file afresh and rank by cosine."""
    config = DecodeConfig(image_size=encoder.image_size)
    paths, vectors = [], []
    for candidate in scan([folder]).candidates:
        outcome = decode_file(candidate, config, encoder.preprocess)
        if isinstance(outcome, DecodedImage):
            paths.append(candidate.path)
            vectors.append(encoder.encode_images(outcome.pixels.unsqueeze(0))[0])
    scores = np.stack(vectors) @ query_vector
    order = np.argsort(-scores, kind="stable")[:k]
    return [paths[i] for i in order], scores[order]


def test_search_equals_brute_force_cosine(tmp_path, image_folder, tiny_encoder):
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    summary = index.add([image_folder], IngestOptions(batch_size=7, workers=2))
    assert summary.indexed == 30 and summary.unchanged == 0
    for text in ["a red square", "a photo of a dog", "grün und blau"]:
        results = index.search_text(text, k=10)
        expected, expected_scores = brute_force_paths(
            tiny_encoder, image_folder, tiny_encoder.encode_texts([text])[0], 10)
        assert [r.path for r in results] == expected
        np.testing.assert_allclose([r.score for r in results], expected_scores, atol=1e-5)
        assert [r.rank for r in results] == list(range(1, 11))
    query = image_folder / "image_0005.webp"
    results = index.search_image(query, k=5)
    assert results[0].path == str(query) and results[0].score == pytest.approx(1.0, abs=1e-5)
    index.close()


def test_rerun_encodes_nothing_and_changes_are_picked_up(tmp_path, image_folder, tiny_encoder):
    counting = CountingEncoder(tiny_encoder)
    index = Index.create(tmp_path / "index", encoder=counting)
    first = index.add([image_folder], OPTIONS)
    assert counting.images_encoded == 30
    assert {os.path.basename(e.path) for e in first.skipped} == {"fake.jpg", "empty.png", "truncated.jpg"}
    assert first.not_images == 1

    second = index.add([image_folder], OPTIONS)
    assert counting.images_encoded == 30  # nothing re-encoded
    assert (second.indexed, second.unchanged) == (0, 30)
    assert index.info().images == 30

    touched = image_folder / "image_0001.png"
    os.utime(touched, ns=(1, 1))  # new mtime, same bytes: not re-encoded
    changed = image_folder / "image_0002.webp"
    old_id = index.catalog.entries([str(changed)])[str(changed)].id
    Image.new("RGB", (50, 50), "orange").save(changed)
    third = index.add([image_folder], OPTIONS)
    assert counting.images_encoded == 31
    assert (third.indexed, third.updated, third.unchanged) == (1, 1, 29)
    assert index.catalog.entries([str(changed)])[str(changed)].id == old_id
    assert len(index.ann) == 30
    index.close()

    reopened = Index.open(tmp_path / "index", encoder=tiny_encoder)
    assert len(reopened.ann) == 30
    hit = reopened.search_image(changed, k=1)[0]
    assert (hit.id, hit.path) == (old_id, str(changed))
    reopened.close()


def test_skipped_files_are_recorded_and_retried_with_new_options(tmp_path, image_folder, tiny_encoder):
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([image_folder], OPTIONS)
    reasons = {os.path.basename(e.path): e.reason for e in index.errors()}
    assert reasons["fake.jpg"].startswith("not an image")
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["truncated.jpg"].startswith("truncated")
    summary = index.add([image_folder], IngestOptions(workers=0, allow_truncated=True))
    assert summary.indexed == 1
    assert {os.path.basename(e.path) for e in index.errors()} == {"fake.jpg", "empty.png"}
    assert index.info().images == 31
    index.close()


def test_a_file_that_turns_bad_leaves_the_faiss_index(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    [first, *_] = make_images(folder, 3)
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([folder], OPTIONS)
    first.write_bytes(b"corrupted now")
    summary = index.add([folder], OPTIONS)
    assert len(summary.skipped) == 1 and len(index.ann) == 2
    assert str(first) not in [r.path for r in index.search_text("x", k=10)]
    index.close()


def test_model_mismatch_and_existing_index(tmp_path, tiny_encoder, tiny_spec):
    Index.create(tmp_path / "index", encoder=tiny_encoder).close()
    with pytest.raises(IndexExistsError):
        Index.create(tmp_path / "index", encoder=tiny_encoder)
    with pytest.raises(ModelMismatchError, match="was built with local-dir:"):
        Index.open_or_create(tmp_path / "index", EncoderSpec("ViT-B-16", "openai"))
    Index.open_or_create(tmp_path / "index", tiny_spec, encoder=tiny_encoder).close()
    with pytest.raises(IndexNotFoundError, match="no index at"):
        Index.open(tmp_path / "elsewhere")


def test_bad_queries_are_clear_errors(tmp_path, tiny_encoder):
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    assert index.search_text("anything", k=5) == []  # empty index: no results, no error
    for k in (0, -3, 10**9):
        with pytest.raises(QueryError, match="k must be"):
            index.search_text("x", k=k)
    with pytest.raises(QueryError, match="empty"):
        index.search_text("   ", k=3)
    from vtsearch.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="cannot read"):
        index.search_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_text("text")
    with pytest.raises(ImageDecodeError, match="not an image"):
        index.search_image(tmp_path / "bad.jpg")
    index.close()


def test_missing_or_damaged_ann_is_rebuilt_from_the_catalog(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    make_images(folder, 12)
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([folder], OPTIONS)
    expected = [r.id for r in index.search_text("blue", k=5)]
    index.close()
    (tmp_path / "index" / "ann.faiss").unlink()
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as reopened:
        assert [r.id for r in reopened.search_text("blue", k=5)] == expected
    assert (tmp_path / "index" / "ann.faiss").is_file()
    (tmp_path / "index" / "ann.faiss").write_bytes(b"junk")
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as reopened:
        assert [r.id for r in reopened.search_text("blue", k=5)] == expected


def test_second_writer_is_told_who_holds_the_lock(tmp_path, tiny_encoder):
    Index.create(tmp_path / "index", encoder=tiny_encoder).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from vtsearch.store.lock import WriterLock
            lock = WriterLock(Path({str(tmp_path / 'index')!r}))
            lock.acquire()
            print("held", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        index = Index.open(tmp_path / "index", encoder=tiny_encoder)
        with pytest.raises(IndexLockedError, match=f"locked by pid {holder.pid}"):
            index.add([tmp_path], OPTIONS)
        assert index.search_text("readers still work", k=3) == []
        index.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder is gone: its lock went with it
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "nothing-here"], OPTIONS)


def test_manifest_records_the_encoder(tmp_path, tiny_encoder, tiny_spec):
    import json

    Index.create(tmp_path / "index", encoder=tiny_encoder).close()
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["model"] == tiny_spec.model
    assert manifest["encoder"]["embed_dim"] == 64
    assert manifest["encoder"]["preprocess"]["size"] == [64, 64]
    assert manifest["ann"]["factory"] == "IDMap2,Flat" and manifest["ann"]["auto"] is True
    assert manifest["schema_version"] == 1
    # the manifest alone is enough to search: no encoder passed in
    with Index.open(tmp_path / "index", device="cpu") as index:
        assert index.encoder.spec == tiny_spec


def test_search_by_vector_finds_the_image_it_came_from(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 10)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        vector = index.catalog.vectors([4], 64)[0] * 3.0  # any scale: normalised inside
        [first, *_] = index.search_vector(vector, k=3)
        assert first.id == 4 and first.score == pytest.approx(1.0, abs=1e-5)


def test_long_and_non_ascii_queries(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 6)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        short = index.query("a red square")
        assert short.notices == [] and len(short.results) == 6
        long = index.query("a red square " * 40, k=3)
        assert len(long.results) == 3
        assert long.notices == ["the query is 122 tokens long; the model reads the first 77 "
                                "and ignores the rest"]
        huge = index.query("word " * 1_000_000, k=2)  # cut to 10,000 characters before tokenizing
        assert len(huge.results) == 2 and "at least 308 tokens" in huge.notices[0]
        for text in ["ein grünes Quadrat", "赤い四角", "🟥 + 🟦", "مربع أحمر"]:
            assert len(index.search_text(text, k=500)) == 6  # k past the index size: all of it
