import json

import numpy as np
import pytest
import torch

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.config import RegionLayout
from vtsearch.decode import decode_file
from vtsearch.errors import RerankerMismatchError
from vtsearch.fusion import FusionConfig
from vtsearch.progress import NoProgress
from vtsearch.query.rerank import Reranker
from vtsearch.records import ScannedFile
from vtsearch.train.validate import ranking_loss
from vtsearch.train import (
    EarlyStopping, Pair, TrainOptions, evaluate, fit_rerank_weight, listwise_loss, match_logits, mine_examples,
    resolve_pairs, sample_candidates,
)

OPTIONS = IngestOptions(batch_size=8, workers=0)


@pytest.fixture
def captioned(tmp_path, tiny_encoder):
    paths = make_images(tmp_path / "photos", 40)
    index = Index.create(tmp_path / "index", encoder=tiny_encoder)
    index.add([tmp_path / "photos"], OPTIONS)
    words = ["red", "green", "blue", "yellow", "black", "white", "tall", "small"]
    pairs = [Pair(str(p), f"a {words[i % 8]} thing number {i}") for i, p in enumerate(paths)]
    yield index, pairs
    index.close()


def test_regions_are_stored_and_recorded(captioned):
    index, _ = captioned
    layout = index.manifest.regions
    assert (layout.grid, layout.dim, layout.stored) == (4, 64, True)  # the tiny ViT's 4 × 4 patches
    info = index.info().to_dict()
    assert info["regions"]["bytes_per_image"] == 16 * 64 * 2
    regions = index.region_source.regions([1, 2])
    assert regions.shape == (2, 16, 64) and regions.dtype == torch.float32


def test_untrained_rerank_equals_stage1(captioned):
    """w = 0 reproduces stage 1 exactly, so queries skip the scorer; any other w runs it."""
    index, _ = captioned
    assert not index.reranker.changes_order
    for text in ["a red thing", "something small and blue"]:
        skipped = index.query(text, k=10, recall_k=40)
        plain = index.query(text, k=10, rerank=False)
        assert not skipped.reranked and set(skipped.timings_ms) == {"encode", "ann"}
        assert [r.id for r in skipped.results] == [r.id for r in plain.results]

        source, reranker = index.region_source, index.reranker
        hits = index.ann.search(index.encoder.encode_texts([text]), 40)[0]
        features = index.encoder.encode_text_features([text])
        output = reranker.rerank(features.tokens[0], features.ids[0], np.array([s for _, s in hits]), source.regions([i for i, _ in hits]))
        assert output.order.tolist() == list(range(40))  # the scorer itself keeps stage-1 order
        np.testing.assert_array_equal(output.final, np.array([s for _, s in hits], dtype=np.float32))

    with torch.no_grad():
        index.reranker.scorer.rerank_weight.fill_(1e-9)
    try:
        ran = index.query("a red thing", k=10, recall_k=40)
        assert ran.reranked and set(ran.timings_ms) == {"encode", "ann", "regions", "rerank"}
        assert [r.stage1_rank for r in ran.results] == list(range(1, 11))  # so small a w keeps the order
    finally:
        with torch.no_grad():
            index.reranker.scorer.rerank_weight.fill_(0.0)


def test_images_sharing_a_caption_are_right_answers_of_each_others_captions():
    """Image 1 is "a red cube" and "a cube in red"; image 2 is "a cube in red" and "red cube
    on grey" (the same scene, other phrasings); image 3 shares nothing. A caption of either
    scene has both images as right answers, so neither is the other's negative."""
    from vtsearch.train.mining import right_answers

    right = right_answers(["a red cube", "a cube in red", "a cube in red", "red cube on grey", "a blue ball"],
                          [1, 1, 2, 2, 3])
    assert right == {"a red cube": {1, 2}, "a cube in red": {1, 2}, "red cube on grey": {1, 2}, "a blue ball": {3}}


def test_a_training_step_lowers_the_loss(captioned):
    index, pairs = captioned
    from vtsearch.fusion import FusionConfig, FusionScorer

    resolved = resolve_pairs(index, pairs)
    examples = mine_examples(index, resolved, depth=20, progress=NoProgress())
    rows = list(range(16))
    candidates = sample_candidates(examples, rows, 5, np.random.default_rng(0))
    assert (candidates[:, 0] == examples.positives[rows]).all()
    assert all(len(set(row)) == 6 for row in candidates.tolist())
    torch.manual_seed(0)
    scorer = FusionScorer(FusionConfig(text_dim=index.encoder.text_token_dim, region_dim=64, grid=4, width=32))
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=3e-3)
    source, device = index.region_source, torch.device("cpu")
    def loss():
        return listwise_loss(match_logits(scorer, examples, rows, candidates, source, device))

    before = float(loss().detach())
    for _ in range(15):
        step = loss()
        optimizer.zero_grad()
        step.backward()
        optimizer.step()
    assert float(loss().detach()) < before * 0.8


def test_fitted_weight_is_zero_for_a_useless_scorer_and_large_for_a_perfect_one():
    stage1 = np.array([[0.30, 0.32, 0.31], [0.20, 0.25, 0.21]], dtype=np.float32)
    perfect = np.array([[5.0, -5.0, -5.0], [5.0, -5.0, -5.0]], dtype=np.float32)
    backwards = -perfect
    assert fit_rerank_weight(stage1, backwards) == 0.0
    assert 0.005 < fit_rerank_weight(stage1, perfect) < 0.01  # the least w that puts every positive first


def test_the_weight_is_fitted_for_ranking_not_for_calibration():
    rng = np.random.default_rng(0)
    stage1 = rng.normal(0, 0.01, (200, 10))  # stage 1 tells the candidates apart at random
    match = rng.normal(0, 1, (200, 10))
    match[:, 0] += 3  # the scorer mostly puts the positive first ...
    match[:50, 1] = match[:50, 0] + 1  # ... but a quarter of the rows hold a "wrong" image it fits better
    # (one scene under another caption): confident there, which a fixed temperature punishes
    w = fit_rerank_weight(stage1, match)
    assert w > 0.1  # the scorer decides; stage 1 is noise beside it
    final = stage1 + w * match
    assert ranking_loss(final) == pytest.approx(ranking_loss(7 * final), abs=0.01)  # any scale ranks the same
    assert ranking_loss(final) < ranking_loss(stage1) - 0.5


def test_training_goes_on_while_the_validation_loss_falls_and_keeps_the_best_scored_weights():
    scorer = torch.nn.Linear(2, 1)
    stopping = EarlyStopping(patience=2)
    # top-1 stays below the untrained scorer's (epoch 1) for four epochs while the loss falls
    history = [(0.14, 3.0), (0.12, 2.9), (0.13, 2.8), (0.11, 2.7), (0.14, 2.6), (0.20, 2.5)]
    for epoch, (top1, loss) in enumerate(history, 1):
        with torch.no_grad():
            scorer.bias.fill_(epoch)
        assert not stopping.should_stop(epoch, top1, loss, scorer)
    assert stopping.best_epoch == 6 and float(stopping.best_state["bias"]) == 6.0
    assert not stopping.should_stop(7, 0.19, 2.55, scorer)  # neither better: waiting 1 of 2
    assert stopping.should_stop(8, 0.19, 2.5, scorer)  # the loss only ties: the run stops
    assert stopping.best_epoch == 6


def test_train_save_and_keep_weights_as_the_index_grows(captioned, tmp_path):
    index, pairs = captioned
    from vtsearch.train import train_reranker

    reranker, report = train_reranker(index, pairs + [Pair("/not/indexed.png", "x")],
                                      TrainOptions(epochs=2, negatives=5, width=32, device="cpu"))
    assert report.missing == ["/not/indexed.png"] and report.used == 40
    assert report.train_captions + report.val_captions == 40 and 1 <= report.best_epoch <= 2
    assert all(0.0 <= record.val_text_top1 <= 1.0 for record in report.history)  # image → text term
    index.save_reranker(reranker)
    manifest = json.loads((index.path / "manifest.json").read_text())
    assert manifest["reranker"]["config"]["width"] == 32 and manifest["reranker"]["config"]["region_layers"] == 1
    make_images(tmp_path / "more", 4, seed=9)
    index.add([tmp_path / "more"], OPTIONS)
    with Index.open(index.path, device="cpu") as reopened:
        assert reopened.reranker.is_trained
        kept = reopened.reranker.scorer.state_dict()
        assert all(torch.equal(value, kept[name]) for name, value in reranker.scorer.state_dict().items())
        assert reopened.query("a red thing", k=3).reranked == reranker.changes_order


def test_eval_reports_the_documented_shape(captioned):
    index, pairs = captioned
    report = evaluate(index, pairs[:10], recall_k=20).to_dict()
    assert set(report["text_to_image"]) == {"stage1", "reranked", "recall_ceiling"}
    assert set(report["text_to_image"]["stage1"]) == {"R@1", "R@5", "R@10"}
    assert report["text_to_image"]["stage1"] == report["text_to_image"]["reranked"]  # untrained
    assert report["n_queries"] == 10
    assert {"encode", "ann", "stage1"} <= set(report["latency_ms"])
    assert "stage2" not in report["latency_ms"]  # w = 0: the scorer is not run
    reverse = report["image_to_text"]
    assert reverse["candidate_source"] == "captions" and reverse["n_images"] >= 1
    assert set(reverse["stage1"]) == {"R@1", "R@5", "R@10"} and reverse["stage1"] == reverse["reranked"]
    index.add_texts([pair.caption for pair in pairs[:10]] + ["an unrelated text"])
    with_collection = evaluate(index, pairs[:10], recall_k=20).to_dict()["image_to_text"]
    assert with_collection["candidate_source"] == "collection" and with_collection["candidates"] == len(
        {pair.caption for pair in pairs[:10]}) + 1


def test_no_regions_index_computes_the_same_regions(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 12)
    stored = Index.create(tmp_path / "stored", encoder=tiny_encoder)
    computed = Index.create(tmp_path / "computed", encoder=tiny_encoder, store_regions=False)
    for index in (stored, computed):
        index.add([tmp_path / "photos"], OPTIONS)
    assert not (tmp_path / "computed" / "regions.f16").exists()
    ids = [1, 5, 7]
    torch.testing.assert_close(stored.region_source.regions(ids), computed.region_source.regions(ids),
                               atol=2e-2, rtol=1e-2)  # fp16 storage
    stored.close()
    computed.close()


def test_word_swapped_captions_keep_the_words_and_change_the_binding():
    from vtsearch.train import swapped_variants

    rng = np.random.default_rng(0)
    caption = "a red square left of a blue circle"
    variants = swapped_variants(caption, 4, rng)
    assert len(variants) == 4 and caption not in variants and len(set(variants)) == 4
    assert all(sorted(v.split()) == sorted(caption.split()) for v in variants)
    assert "a blue square left of a red circle" in swapped_variants(caption, 100, rng)
    assert swapped_variants("a cat", 3, rng) == []  # one content word: nothing to swap


def test_word_kinds_come_from_the_captions_and_swaps_keep_the_sentence():
    from vtsearch.train import WordKinds

    rng = np.random.default_rng(0)
    colours, shapes = ["red", "blue", "green", "orange"], ["square", "circle", "cross"]
    captions = [f"{'an' if c1 == 'orange' else 'a'} {c1} {s1} {relation} a {c2} {s2}"
                for c1 in colours for s1 in shapes for c2 in colours for s2 in shapes
                for relation in ("left of", "above") if c1 != c2]
    kinds = WordKinds(captions)
    assert kinds.same_kind("red", "orange") and kinds.same_kind("Circle", "cross")  # "an orange": the same slot
    assert not kinds.same_kind("red", "circle") and not kinds.same_kind("red", "red")
    assert not kinds.same_kind("red", "unicorn")  # a word the captions never had
    caption = "a red square left of a blue circle"
    variants = kinds.swaps(caption, 10, rng)
    # colours traded, shapes traded, or both (the two things trade places); nothing else
    assert sorted(variants) == sorted(["a blue square left of a red circle", "a red circle left of a blue square",
                                       "a blue circle left of a red square"])
    assert kinds.swaps("a red square", 3, rng) == []  # one thing: nothing to swap


def test_train_reranker_command_reports_each_epoch(captioned, tmp_path):
    from click.testing import CliRunner

    from vtsearch.cli import main

    index, pairs = captioned
    index.close()
    lines = [json.dumps({"image": pair.image, "caption": pair.caption}) for pair in pairs]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["train-reranker", str(tmp_path / "pairs.jsonl"), "--index", str(index.path),
                                       "--epochs", "2", "--negatives", "5", "--width", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.count("epoch 1: train loss") == 2  # live on stderr, then the summary on stdout
    assert "val caption loss" in result.output  # what early stopping watches beside top-1
    assert "trained on" in result.output and "kept epoch" in result.output
    assert (index.path / "reranker.pt").is_file()


def test_a_run_says_how_long_it_will_take_before_its_first_epoch_ends(captioned):
    """The estimate comes from the first steps and one validation pass, before epoch 1
    is over; the caption scorer's vocabulary is the training captions' tokens."""
    index, pairs = captioned
    from vtsearch.train import TrainPlan, train_reranker

    plans: list[TrainPlan] = []
    seen_when: list[int] = []
    epochs: list = []
    reranker, report = train_reranker(index, pairs, TrainOptions(epochs=2, batch_size=2, width=16, device="cpu"),
                                      on_plan=lambda plan: (plans.append(plan), seen_when.append(len(epochs))),
                                      on_epoch=lambda record: epochs.append(record))
    assert len(plans) == 1 and seen_when == [0]
    plan = plans[0]
    assert plan.epochs == 2 and plan.steps_per_epoch == -(-report.train_captions // 2)
    assert plan.step_seconds > 0 and plan.validation_seconds > 0 and plan.seconds > plan.validation_seconds
    assert plan.swap_epochs == 1 and plan.swap_step_seconds > 0  # epoch 2 of 2 swaps words (the default)
    assert plan.seconds == pytest.approx(plan.steps_per_epoch * (plan.step_seconds + plan.swap_step_seconds)
                                         + 2 * plan.validation_seconds)
    config = reranker.scorer.config
    caption_ids = [int(i) for pair in pairs for i in index.encoder.encode_text_features([pair.caption]).ids[0]]
    assert config.score == "caption" and set(config.vocab) == set(caption_ids)
    counts = [caption_ids.count(i) for i in config.vocab]
    assert counts == sorted(counts, reverse=True) and config.head_cutoffs == ()  # commonest first; a few: one softmax


def test_the_match_objective_still_trains_a_match_head(captioned):
    index, pairs = captioned
    from vtsearch.train import train_reranker

    reranker, report = train_reranker(index, pairs, TrainOptions(objective="match", epochs=1, negatives=5,
                                                                 width=16, device="cpu"))
    config = reranker.scorer.config
    assert config.score == "match" and config.vocab == () and report.epochs_run == 1
    assert all(0.0 <= record.val_text_top1 <= 1.0 for record in report.history)


def test_a_scorer_refuses_regions_kept_in_another_layout(captioned):
    """A scorer trained on an index whose regions have another shape (copied from a
    CoCa index, say) is refused by name rather than read off by one token."""
    index, _ = captioned
    features = index.encoder.encode_text_features(["a red thing"])
    regions = index.region_source.regions([1, 2])  # (2, 16, 64)
    other = Reranker.untrained(FusionConfig(text_dim=index.encoder.text_token_dim, region_dim=64, grid=4, prefix=1))
    with pytest.raises(RerankerMismatchError, match="1 \\+ 4x4 regions an image, not 16"):
        other.rerank(features.tokens[0], features.ids[0], np.zeros(2, dtype=np.float32), regions)
    padded = torch.cat([regions[:, :1], regions], dim=1)
    assert len(other.rerank(features.tokens[0], features.ids[0], np.zeros(2, dtype=np.float32), padded).order) == 2


def test_an_index_made_before_keeps_its_kind_of_regions(tmp_path, tiny_encoder):
    """New CLIP-ViT indexes keep the last block's tokens; an index whose manifest says
    nothing (made before) kept the projected final tokens, and images added to it later
    get those too, so its trained scorer still reads what it was trained on."""
    make_images(tmp_path / "first", 4)
    make_images(tmp_path / "later", 3, seed=5)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "first"], OPTIONS)
        assert index.manifest.regions.source == "blocks"
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["regions"]["source"]  # as an older vtsearch wrote it (the tiny ViT's width is its joint space's)
    manifest_path.write_text(json.dumps(manifest))
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as older:
        assert older.manifest.regions.source == "final"
        older.add([tmp_path / "later"], OPTIONS)
        added = older.image_ids([str(path) for path in sorted((tmp_path / "later").iterdir())])
        stored = older.region_source.regions(list(added.values()))
        pixels = torch.stack([decode_file(ScannedFile(str(path), 0, 0), tiny_encoder.decode_config(),
                                          tiny_encoder.preprocess).pixels for path in added])
        final = tiny_encoder.encode_image_features(pixels, RegionLayout(grid=4, dim=64, source="final")).regions
        torch.testing.assert_close(stored, final, atol=2e-2, rtol=1e-2)  # fp16 on disk


def test_swaps_contrast_each_caption_with_its_word_swapped_variants(captioned, monkeypatch):
    """In the second half of the epochs the caption objective also ranks each caption
    above its swaps (two words of one kind traded) under its image; the loss stays finite."""
    from vtsearch.train import objective, train_reranker

    index, pairs = captioned
    words = ["red", "green", "blue", "yellow", "black"]
    pairs = [Pair(pair.image, f"a {words[i % 5]} cube left of a {words[(i + 2) % 5]} ball")
             for i, pair in enumerate(pairs)]
    seen: list[int] = []
    contrast = objective.swap_contrast

    def spy(given_image, prior, lengths, captions, slots):
        seen.append(len(slots))
        return contrast(given_image, prior, lengths, captions, slots)

    monkeypatch.setattr(objective, "swap_contrast", spy)
    options = TrainOptions(epochs=2, patience=5, batch_size=8, width=16, device="cpu")
    assert options.swaps == 1 and options.swaps_from == 0.5  # the defaults: one swap, from halfway
    _, report = train_reranker(index, pairs, options)
    assert report.epochs_run == 2
    assert seen and sum(seen) == report.train_captions  # epoch 2 only; one swap each: colours, shapes or both
    assert all(np.isfinite(record.train_loss) for record in report.history)
    seen.clear()
    train_reranker(index, pairs, TrainOptions(epochs=1, swaps=0, batch_size=8, width=16, device="cpu"))
    assert not seen


def test_eval_ranks_texts_for_an_image_as_match_does(captioned):
    """Image → text in eval encodes each candidate text once for all images; the ranks are
    those of Index.rerank_texts, which encodes them per image."""
    from vtsearch.train.evaluate import _candidate_texts, evaluate_image_to_text, recall_at

    index, pairs = captioned
    with torch.no_grad():
        index.reranker.scorer.rerank_weight.fill_(5.0)  # an untrained scorer that changes the order
    try:
        captions, ids = [pair.caption for pair in pairs[:12]], resolve_pairs(index, pairs[:12]).image_ids
        report = evaluate_image_to_text(index, captions, ids, recall_k=8)
        texts, vectors, _ = _candidate_texts(index, captions)
        ranks = []
        for caption, image_id, vector in zip(captions, ids, index.vectors(ids)):
            scores = vectors @ vector
            shortlist = np.argsort(-scores, kind="stable")[:8]
            order = index.rerank_texts(image_id, [texts[i] for i in shortlist], scores[shortlist])
            ranks.append(next((rank for rank, i in enumerate(shortlist[order], 1) if texts[i] == caption), None))
        assert report.reranked == recall_at(ranks) and report.reranked != report.stage1
    finally:
        with torch.no_grad():
            index.reranker.scorer.rerank_weight.fill_(0.0)
