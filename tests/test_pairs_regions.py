import json
import os
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from vtsearch.errors import IndexFormatError, VtsearchError
from vtsearch.store.regions import RegionLayout, RegionStore
from vtsearch.train import load_pairs, recall_at, split_by_image
from vtsearch.train.loop import TrainOptions
from vtsearch.train.pairs import validation_images


def test_json_lines_relative_and_absolute(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "a/1.png", "caption": " a cat "}) + "\n\n"
        + json.dumps({"image": "/abs/2.png", "captions": ["x", "y"]}) + "\n"
    )
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert [(p.image, p.caption) for p in pairs] == [
        (str(tmp_path / "a" / "1.png"), "a cat"), ("/abs/2.png", "x"), ("/abs/2.png", "y")]
    rooted = load_pairs(tmp_path / "pairs.jsonl", images_root="/data")
    assert rooted[0].image == "/data/a/1.png"


def test_coco_captions(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "000007.jpg"}, {"id": 9, "file_name": "000009.jpg"}],
            "annotations": [{"image_id": 7, "caption": "a dog"}, {"image_id": 9, "caption": "a bus"},
                            {"image_id": 7, "caption": "a brown dog"}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    pairs = load_pairs(tmp_path / "captions_val2017.json", images_root=tmp_path / "val2017")
    assert [(os.path.basename(p.image), p.caption) for p in pairs] == [
        ("000007.jpg", "a dog"), ("000009.jpg", "a bus"), ("000007.jpg", "a brown dog")]
    assert pairs[0].image.startswith(str(tmp_path / "val2017"))


def test_karpathy_splits(tmp_path):
    data = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "one"}]},
        {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "two"}, {"raw": "2"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "restval", "sentences": [{"raw": "three"}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    train = load_pairs(tmp_path / "dataset_coco.json", split="train")
    assert [p.caption for p in train] == ["two", "2", "three"]
    test = load_pairs(tmp_path / "dataset_coco.json", split="test")
    assert [(p.image, p.caption) for p in test] == [(str(tmp_path / "val2014" / "a.jpg"), "one")]
    with pytest.raises(VtsearchError, match="no captioned images"):
        load_pairs(tmp_path / "dataset_coco.json", split="nope")


def test_the_validation_split_follows_file_names():
    images = [f"/data/train/{number:05d}.png" for number in range(2000) for _ in range(2)]  # two captions each
    train, val = split_by_image(images, 0.1, seed=0)
    assert sorted(train + val) == list(range(len(images)))
    held = {images[row] for row in val}
    assert not held & {images[row] for row in train}  # an image's captions stay together
    assert 150 <= len(held) <= 250  # about a tenth of 2,000
    # the same images wherever the set lies, so a model can be trained without them beforehand
    assert held == validation_images(images, 0.1, 0)
    moved = ["/moved" + image[5:] for image in images]
    assert {"/moved" + image[5:] for image in held} == validation_images(moved, 0.1, 0)
    assert held != {images[row] for row in split_by_image(images, 0.1, seed=1)[1]}
    # too few images for a tenth: one is still held out
    assert len(split_by_image(["/a.png", "/b.png", "/c.png"], 0.1, 0)[1]) == 1


def test_train_clip_leaves_out_what_train_reranker_validates_on(tmp_path, monkeypatch):
    train_clip = load_script("train_clip", monkeypatch)
    (tmp_path / "images").mkdir()
    lines = []
    for number in range(60):
        Image.new("RGB", (8, 8), (number, 0, 0)).save(tmp_path / "images" / f"{number:03d}.png")
        lines += [json.dumps({"image": f"images/{number:03d}.png", "caption": f"scene {number} {n}"}) for n in (1, 2)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    pairs = load_pairs(tmp_path / "train.jsonl")
    options = TrainOptions()
    _, val = split_by_image([pair.image for pair in pairs], options.val_fraction, options.seed)
    validated = {pairs[row].caption for row in val}
    assert validated
    pixels, captions = train_clip.load_pairs(tmp_path / "train.jsonl", 8, options)
    trained = {caption for texts in captions for caption in texts}
    assert len(pixels) == len(captions) == 60 - len(validated) // 2
    assert not trained & validated and len(trained | validated) == 120
    _, everything = train_clip.load_pairs(tmp_path / "train.jsonl", 8)
    assert len(everything) == 60


def test_malformed_pairs_are_clear_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(VtsearchError, match="line 1"):
        load_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(VtsearchError, match="empty"):
        load_pairs(tmp_path / "empty.jsonl")


def test_recall_on_a_known_case():
    ranks = [1, 3, None, 10, 2]
    assert recall_at(ranks) == {"R@1": 0.2, "R@5": 0.6, "R@10": 0.8}


def test_region_store_appends_durably_and_cuts_torn_rows(tmp_path):
    layout = RegionLayout(grid=2, dim=3)
    store = RegionStore(tmp_path / "regions.f16", layout)
    first = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    assert store.append(first) == [0, 1]
    with open(tmp_path / "regions.f16", "ab") as handle:  # a crash mid-append
        handle.write(b"\x00" * 5)
    second = np.full((1, 4, 3), 7, dtype=np.float32)
    assert store.append(second) == [2]
    np.testing.assert_array_equal(store.read([2, 0]), np.concatenate([second, first[:1]]).astype(np.float16))
    assert len(store) == 3 and layout.row_bytes == 24
    with pytest.raises(IndexFormatError, match="past the end"):
        store.read([5])
    with pytest.raises(ValueError):
        store.append(np.zeros((1, 2, 3)))


def test_random_negatives_are_found_when_few_images_are_wrong():
    """Validation fills a short list of wrong answers with random images: with most of the
    index right for a caption, it still ends (drawing again, then allowing repeats)."""
    from vtsearch.train.mining import Examples, sample_candidates

    examples = Examples(tokens=[], ids=[], positives=np.array([1, 1]), neighbours=[np.array([], dtype=np.int64)] * 2,
                        right=[{1, 2}, {1, 2, 3}], caption_vectors=np.zeros((2, 4)),
                        image_ids=np.array([1, 2, 3, 4]), image_vectors=np.zeros((4, 4)))
    for rng in (None, np.random.default_rng(0)):
        candidates = sample_candidates(examples, [0, 1], 2, rng)
        assert candidates[:, 0].tolist() == [1, 1]
        assert set(candidates[0, 1:]) <= {3, 4} and set(candidates[1, 1:]) == {4}
    with pytest.raises(VtsearchError, match="no wrong image"):
        sample_candidates(replace(examples, right=[{1, 2, 3, 4}] * 2), [0], 2, None)
