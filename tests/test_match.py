"""Text collections (each file format, dedupe, removal) and image → text matching."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import make_images
from vtsearch import Index, IngestOptions, QueryError, VtsearchError
from vtsearch.cli import main
from vtsearch.query.texts import MAX_TEXT_CHARS, TextRecord, read_texts

WORDS = ["a red square", "a blue circle", "a green triangle", "a dog on a beach", "a bowl of fruit",
         "ein gelbes Auto", "夜の港", "a black and white photo"]


def test_each_file_format(tmp_path):
    (tmp_path / "plain.txt").write_text("a red square\n\n  a blue circle  \n")
    assert [r.text for r in read_texts(tmp_path / "plain.txt")] == ["a red square", "a blue circle"]
    (tmp_path / "items.jsonl").write_text(
        json.dumps({"text": "a cat", "id": 7, "source": "shop"}) + "\n\n" + json.dumps({"text": "a dog"}) + "\n")
    assert read_texts(tmp_path / "items.jsonl") == [TextRecord("a cat", "7", {"source": "shop"}), TextRecord("a dog")]
    (tmp_path / "titles.csv").write_text('id,title,price\nA1,"a red, shiny car",10\nA2,a bike,5\n')
    assert read_texts(tmp_path / "titles.csv", column="title") == [
        TextRecord("a red, shiny car", "A1", {"price": "10"}), TextRecord("a bike", "A2", {"price": "5"})]
    (tmp_path / "titles.tsv").write_text("text\tcolour\na lamp\tred\n")
    assert read_texts(tmp_path / "titles.tsv") == [TextRecord("a lamp", None, {"colour": "red"})]


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", '{"text": "fine"}\n{"text": "   "}\n', "empty.jsonl:2: the text is empty"),
    ("long.txt", "ok\n" + "x" * (MAX_TEXT_CHARS + 1) + "\n", "long.txt:2: the text is 2,001 characters long"),
    ("nofield.jsonl", '{"caption": "x"}\n', 'expected an object with a "text" field'),
    ("broken.jsonl", '{"text": \n', "broken.jsonl:1: not JSON"),
    ("number.jsonl", '{"text": 5}\n', "the text must be a string"),
    ("nocolumn.csv", "title\nx\n", "no column 'text' (columns: 'title'); name it with --column"),
    ("blank.txt", "\n\n", "holds no texts"),
])
def test_bad_text_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(VtsearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_texts(tmp_path / name)


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(VtsearchError, match="is not UTF-8 text"):
        read_texts(tmp_path / "latin1.txt")


@pytest.fixture
def indexed(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 12)
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([tmp_path / "photos"], IngestOptions(workers=0))
    yield index, tmp_path
    index.close()


def test_collection_is_deduplicated_listed_and_removed(indexed):
    index, _ = indexed
    summary = index.add_texts([*WORDS, "a red square", TextRecord("a lamp", "L1")])
    assert (summary.added, summary.duplicates) == (9, 1)
    assert index.add_texts(["a red square", "a new one"]).to_dict() == {
        "added": 1, "duplicates": 1, "longer_than_context": 0}
    rows = index.texts()
    assert [r.text for r in rows][:2] == ["a red square", "a blue circle"] and len(rows) == 10
    assert index.texts(limit=2, offset=1)[0].text == "a blue circle"
    assert index.remove_texts(ids=[rows[0].id], texts=["a blue circle"], keys=["L1"]) == 3
    assert len(index.texts()) == 7
    with pytest.raises(VtsearchError, match="text 1: the text is empty"):
        index.add_texts(["  "])


def test_match_ranks_the_collection_like_brute_force(indexed):
    index, root = indexed
    index.add_texts(WORDS)
    image = root / "photos" / "image_0005.webp"  # id 6: ids follow the sorted scan
    response = index.match(image, k=5)
    vector = index.catalog.vectors([6], 64)[0]
    scores = index.encoder.encode_texts(WORDS) @ vector
    assert [r.text for r in response.results] == [WORDS[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert [r.stage1_rank for r in response.results] == [1, 2, 3, 4, 5] and not response.reranked
    np.testing.assert_allclose([r.score for r in response.results], np.sort(scores)[::-1][:5], atol=1e-5)
    assert response.image == str(image)
    by_id = index.match(6, k=5)
    assert [r.text for r in by_id.results] == [r.text for r in response.results]
    assert [r.text for r in index.match("6", k=5).results] == [r.text for r in response.results]
    outside = root / "outside.png"
    Image.open(image).save(outside)  # not in the index: decoded and encoded on the fly
    assert [r.text for r in index.match(outside, k=5).results] == [r.text for r in response.results]


def test_labels_need_no_collection_and_missing_inputs_are_clear(indexed):
    index, root = indexed
    with pytest.raises(QueryError, match="no text collection"):
        index.match(1)
    response = index.match(1, k=2, labels=["cat", "dog", "cat", "a bowl of fruit"])
    assert len(response.results) == 2 and all(r.id is None for r in response.results)
    assert {r.text for r in index.match(1, k=10, labels=["cat", "dog", "cat"]).results} == {"cat", "dog"}
    with pytest.raises(QueryError, match="no indexed image has id 999"):
        index.match(999, labels=["x"])
    with pytest.raises(VtsearchError, match="label 2: the text is empty"):
        index.match(1, labels=["x", ""])
    with pytest.raises(VtsearchError, match="cannot read query image"):
        index.match(root / "nope.jpg", labels=["x"])


def test_query_images_as_bytes_ids_and_files_agree(indexed):
    index, root = indexed
    path = root / "photos" / "image_0004.png"
    by_file = [r.id for r in index.query(image=path, k=4).results]
    assert [r.id for r in index.query(image=path.read_bytes(), k=4).results] == by_file
    assert [r.id for r in index.query(image=5, k=4).results] == by_file  # image_0004 is id 5
    assert index.match(path.read_bytes(), labels=["a", "b"]).image == "(upload)"
    with pytest.raises(VtsearchError, match=r"cannot use query image \(upload\): not an image"):
        index.query(image=b"not an image at all")
    with pytest.raises(VtsearchError, match="cannot use query image .*: truncated"):
        index.query(image=path.read_bytes()[:200])


def test_explain_reports_the_scorers_attention(indexed):
    index, _ = indexed
    attention = index.explain(2, "a red square")
    assert attention.tokens == ["<start_of_text>", "a", "red", "square", "<end_of_text>"]
    assert np.shape(attention.weights) == (5, 16)
    assert np.allclose(np.sum(attention.weights, axis=1), 1.0, atol=2e-3)  # bf16 on CPUs that have it
    assert attention.score == attention.stage1_score and not attention.reranks  # w = 0
    with pytest.raises(QueryError, match="no indexed image has id 99"):
        index.explain(99, "x")


def test_a_scorer_with_weight_reranks_the_texts(indexed):
    index, _ = indexed
    index.add_texts(WORDS)
    plain = index.match(3, k=8, rerank=False)
    with torch.no_grad():
        index.reranker.scorer.rerank_weight.fill_(1e-9)
    try:
        ranked = index.match(3, k=8, recall_k=8)
    finally:
        with torch.no_grad():
            index.reranker.scorer.rerank_weight.fill_(0.0)
    assert ranked.reranked and "rerank" in ranked.timings_ms
    assert [r.text for r in ranked.results] == [r.text for r in plain.results]  # so small a w keeps the order


def test_texts_and_match_commands(tmp_path, tiny_model_dir):
    make_images(tmp_path / "photos", 4)
    runner = CliRunner()
    index_dir = str(tmp_path / "index")
    assert runner.invoke(main, ["index", str(tmp_path / "photos"), "--index", index_dir, "--model",
                                f"local-dir:{tiny_model_dir}", "--workers", "0"]).exit_code == 0
    (tmp_path / "titles.csv").write_text("id,title\n1,a red square\n2,a blue circle\n")
    result = runner.invoke(main, ["texts", "add", str(tmp_path / "titles.csv"), "--column", "title",
                                  "--index", index_dir, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {
        "added": 2, "duplicates": 0, "longer_than_context": 0, "texts": 2}
    result = runner.invoke(main, ["match", str(tmp_path / "photos" / "image_0000.jpg"), "--index", index_dir,
                                  "--json"])
    answer = json.loads(result.stdout)
    assert answer["image"].endswith("image_0000.jpg")
    assert set(answer["results"][0]) == {"rank", "id", "text", "score", "stage1_score", "stage1_rank"}
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    result = runner.invoke(main, ["match", "1", "--labels", str(tmp_path / "labels.txt"), "--label", "bird",
                                  "--index", index_dir, "--json"])
    assert sorted(r["text"] for r in json.loads(result.stdout)["results"]) == ["bird", "cat", "dog"]
    result = runner.invoke(main, ["texts", "list", "--index", index_dir, "--json"])
    assert [r["key"] for r in json.loads(result.stdout)] == ["1", "2"]
    assert json.loads(runner.invoke(main, ["info", "--index", index_dir, "--json"]).stdout)["texts"] == 2
    assert runner.invoke(main, ["check", "--index", index_dir]).exit_code == 0  # images untouched
    result = runner.invoke(main, ["texts", "remove", "--key", "1", "--index", index_dir])
    assert result.exit_code == 0 and "removed 1 texts" in result.stdout
