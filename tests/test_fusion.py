from dataclasses import replace

import numpy as np
import pytest
import torch

from vtsearch.fusion import AdaptiveHead, FusionConfig, FusionScorer, TextBatch, head_cutoffs
from vtsearch.query.rerank import Reranker

CONFIG = FusionConfig(text_dim=24, region_dim=40, grid=3, width=32, layers=2, heads=4)
CAPTION_CONFIG = FusionConfig(text_dim=24, region_dim=40, grid=3, width=32, layers=2, heads=4, score="caption",
                              vocab=(2, 3, 5))


def texts(*states: torch.Tensor) -> TextBatch:
    """A batch of texts with made-up token ids."""
    return TextBatch.pad(states, [torch.arange(1, len(row) + 1) for row in states])


def test_scorer_shapes_and_attention_maps():
    scorer = FusionScorer(CONFIG).eval()
    batch = texts(torch.randn(5, 24), torch.randn(3, 24))
    assert batch.states.shape == (2, 5, 24) and batch.lengths.tolist() == [5, 3]
    assert batch.ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]]
    regions = torch.randn(2, 9, 40)
    match, attention = scorer(batch, regions, need_weights=True)
    assert match.shape == (2,)
    assert len(attention) == 2 and attention[0].shape == (2, 5, 9)
    torch.testing.assert_close(attention[0].sum(-1), torch.ones(2, 5))
    assert scorer.region_positions().shape == (9, 32)


def test_text_tokens_carry_word_embeddings(tiny_encoder):
    """Each token is the tower's contextual state beside its word's input embedding
    (token + position), so the same word at another place differs in both parts."""
    features = tiny_encoder.encode_text_features(["a red cube left of a blue ball", "a blue ball"])
    tokens = features.tokens[0]
    assert tokens.shape[1] == tiny_encoder.text_token_dim > tiny_encoder.embed_dim
    words = tokens[:, tiny_encoder.embed_dim:]
    table = tiny_encoder.model.token_embedding.weight
    ids = tiny_encoder.tokenizer(["a red cube left of a blue ball"])[0]
    expected = table[ids[: len(tokens)]] + tiny_encoder.model.positional_embedding[: len(tokens)]
    torch.testing.assert_close(words, expected.float())


@pytest.mark.parametrize("config", [CONFIG, CAPTION_CONFIG], ids=["match", "caption"])
def test_padding_does_not_change_a_score(config):
    scorer = FusionScorer(config).eval()
    short = torch.randn(3, 24)
    regions = torch.randn(1, 9, 40)
    alone, _ = scorer(texts(short), regions)
    together, _ = scorer(texts(short, torch.randn(6, 24)), regions.expand(2, -1, -1))
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)


def test_region_blocks_mix_the_regions_and_read_one_image_once_for_many_texts():
    """With a region block a region's state depends on the other regions; one image
    scored against several texts (an expanded view) gives what its copies give."""
    config = FusionConfig(text_dim=24, region_dim=40, grid=3, width=32, heads=4, region_layers=1,
                          score="caption", vocab=(2, 3, 5))
    scorer = FusionScorer(config).eval()
    regions = torch.randn(1, 9, 40)
    changed = regions.clone()
    changed[0, 8] = torch.randn(40)  # another feature (a uniform shift would be normed away)
    with torch.no_grad():
        assert not torch.allclose(scorer.read_image(regions)[0, 0], scorer.read_image(changed)[0, 0])
        batch = texts(torch.randn(4, 24), torch.randn(6, 24), torch.randn(2, 24))
        viewed, _ = scorer(batch, regions.expand(3, -1, -1))
        copied, _ = scorer(batch, regions.repeat(3, 1, 1))
    torch.testing.assert_close(viewed, copied, atol=1e-5, rtol=1e-5)


def test_untrained_scorer_keeps_stage1_order_exactly():
    reranker = Reranker.untrained(CONFIG)
    assert float(reranker.scorer.rerank_weight.detach()) == 0.0
    stage1 = np.array([0.9, 0.8, 0.8, 0.5, 0.1], dtype=np.float32)  # a tie included
    output = reranker.rerank(torch.randn(4, 24), torch.arange(4), stage1, torch.randn(5, 9, 40))
    assert output.order.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(output.final, stage1)


def test_trained_weight_reorders(tmp_path):
    reranker = Reranker.untrained(CONFIG)
    with torch.no_grad():
        reranker.scorer.rerank_weight.fill_(10.0)
    reranker.trained = {"pairs": 1}
    reranker.save(tmp_path / "reranker.pt")
    loaded = Reranker.load(tmp_path / "reranker.pt")
    assert loaded.is_trained and float(loaded.scorer.rerank_weight.detach()) == 10.0
    tokens, ids, regions = torch.randn(4, 24), torch.arange(4), torch.randn(5, 9, 40)
    stage1 = np.linspace(0.5, 0.4, 5).astype(np.float32)
    first, second = reranker.rerank(tokens, ids, stage1, regions), loaded.rerank(tokens, ids, stage1, regions)
    np.testing.assert_allclose(first.final, second.final, rtol=1e-5)
    assert sorted(first.order.tolist()) == [0, 1, 2, 3, 4]


def test_damaged_weights_are_a_clear_error(tmp_path):
    from vtsearch.errors import IndexFormatError

    (tmp_path / "reranker.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IndexFormatError, match="reranker weights"):
        Reranker.load(tmp_path / "reranker.pt")


def test_weights_of_an_older_scorer_ask_for_retraining(tmp_path):
    from vtsearch.errors import IndexFormatError

    reranker = Reranker.untrained(CONFIG)
    reranker.save(tmp_path / "reranker.pt")
    checkpoint = torch.load(tmp_path / "reranker.pt", weights_only=True)
    checkpoint["format"] = 1
    torch.save(checkpoint, tmp_path / "reranker.pt")
    with pytest.raises(IndexFormatError, match="train it again with vtsearch train-reranker"):
        Reranker.load(tmp_path / "reranker.pt")


def test_a_format_2_scorer_still_runs_with_two_way_attention(tmp_path):
    """Scorers saved before the caption head (format 2) load as match scorers whose
    self-attention sees the whole text, as they were trained."""
    reranker = Reranker.untrained(CONFIG)
    reranker.save(tmp_path / "reranker.pt")
    checkpoint = torch.load(tmp_path / "reranker.pt", weights_only=True)
    checkpoint["format"] = 2
    del checkpoint["config"]["causal"], checkpoint["config"]["score"]
    torch.save(checkpoint, tmp_path / "reranker.pt")
    loaded = Reranker.load(tmp_path / "reranker.pt")
    assert loaded.scorer.config.score == "match" and not loaded.scorer.config.causal


# The caption scorer, on a hand-made world: a 2 x 2 grid of regions holding two colours
# (one-hot features), and captions [start, colour, "left"/"right", colour, end].
START, END, LEFT, RIGHT, COLOURS = 1, 2, 20, 21, (10, 11, 12, 13)
WORLD = FusionConfig(text_dim=32, region_dim=8, grid=2, max_tokens=8, width=32, layers=2, heads=4,
                     score="caption", vocab=(END, *COLOURS, LEFT, RIGHT), word_dim=32)


def world_image(left: int, right: int, rows: tuple[int, int]) -> torch.Tensor:
    """(4, 8) regions: colour ``left`` in the left column, ``right`` in the right one."""
    regions = torch.zeros(4, 8)
    regions[rows[0] * 2 + 0, COLOURS.index(left)] = 1.0
    regions[rows[1] * 2 + 1, COLOURS.index(right)] = 1.0
    return regions + 0.05 * torch.randn(4, 8)


def world_text(first: int, relation: int, second: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([START, first, relation, second, END])
    return torch.nn.functional.one_hot(ids, 32).float(), ids


def world_batch(generator: torch.Generator, size: int) -> tuple[TextBatch, torch.Tensor]:
    states, ids, images = [], [], []
    for _ in range(size):
        left, right = (COLOURS[int(i)] for i in torch.randperm(4, generator=generator)[:2])
        rows = tuple(int(r) for r in torch.randint(2, (2,), generator=generator))
        images.append(world_image(left, right, rows))
        said = (left, LEFT, right) if torch.rand(1, generator=generator) < 0.5 else (right, RIGHT, left)
        text_states, text_ids = world_text(*said)
        states.append(text_states)
        ids.append(text_ids)
    return TextBatch.pad(states, ids), torch.stack(images)


# the same world's scorer with an adaptive head: "left" and "right" in its common part,
# two colours in one rarer band, the other two and the end in another
ADAPTIVE_WORLD = replace(WORLD, vocab=(LEFT, RIGHT, *COLOURS, END), head_cutoffs=(3, 5))


@pytest.mark.parametrize("config", [WORLD, ADAPTIVE_WORLD], ids=["softmax", "adaptive"])
def test_caption_training_lowers_the_loss_and_learns_which_side(config):
    """A step of the caption objective lowers it, and a briefly trained scorer ranks the
    image where red is on the left first for "red left of blue", and the other way for
    "red right of blue" (the same words in another order)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    scorer = FusionScorer(config)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        batch, images = world_batch(generator, 32)
        loss = scorer.caption_loss(batch, images) + scorer.caption_loss(batch, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    red, blue = COLOURS[0], COLOURS[2]
    red_left, red_right = world_image(red, blue, (0, 1)), world_image(blue, red, (1, 0))
    reranker = Reranker(scorer)
    with torch.no_grad():
        scorer.rerank_weight.fill_(1.0)
    stage1 = np.zeros(2, dtype=np.float32)
    images = torch.stack([red_right, red_left])
    assert reranker.rerank(*world_text(red, LEFT, blue), stage1, images).order.tolist() == [1, 0]
    assert reranker.rerank(*world_text(red, RIGHT, blue), stage1, images).order.tolist() == [0, 1]
    # image -> text: the same scorer picks the caption that says where red is
    texts = [world_text(red, LEFT, blue), world_text(blue, LEFT, red)]
    output = reranker.rerank_texts([s for s, _ in texts], [i for _, i in texts], stage1, red_left)
    assert output.order.tolist() == [0, 1]
    # ranking texts uses the weight fitted for it when training fitted one; search keeps w
    fitted = Reranker(scorer, trained={"val": {"w": 1.0, "text_w": 0.25}})
    scored = fitted.rerank_texts([s for s, _ in texts], [i for _, i in texts], np.array([0.5, 0.0]), red_left)
    np.testing.assert_allclose(scored.final, np.array([0.5, 0.0]) + 0.25 * scored.match_logit, rtol=1e-5)
    assert fitted.rerank(*world_text(red, LEFT, blue), stage1, images).order.tolist() == [1, 0]


def test_caption_score_is_pointwise_mutual_information():
    """The match logit is log p(text | image) − log p(text | no image), and the prior a
    search computes once equals the one computed per row."""
    scorer = FusionScorer(WORLD).eval()
    batch, images = world_batch(torch.Generator().manual_seed(1), 3)
    with torch.no_grad():
        match, _ = scorer(batch, images)
        expected = scorer.text_log_likelihood(batch, images) - scorer.text_log_likelihood(batch, None)
    torch.testing.assert_close(match, expected)
    assert torch.all(scorer.text_log_likelihood(batch, None) < 0)


def test_an_unknown_token_is_one_class_and_a_bidirectional_tower_reads_words_only():
    config = FusionConfig(text_dim=40, region_dim=8, grid=2, width=16, layers=1, heads=2, score="caption",
                          vocab=(9, 5), word_dim=16, causal_states=False)  # commonest first: 9 is class 1
    scorer = FusionScorer(config)
    assert scorer.text_in.in_features == 16
    states = torch.randn(1, 4, 40)
    batch = TextBatch(states, torch.tensor([[1, 9, 777, 5]]), torch.tensor([4]))
    targets, real = scorer._next_tokens(batch)
    assert targets.tolist() == [[1, 0, 2]] and real.tolist() == [[1.0, 1.0, 1.0]]
    # the contextual part of a token is not read: changing it changes nothing
    changed = TextBatch(torch.cat([torch.randn(1, 4, 24), states[..., 24:]], dim=-1), batch.ids, batch.lengths)
    regions = torch.randn(1, 4, 8)
    torch.testing.assert_close(scorer(batch, regions)[0], scorer(changed, regions)[0])


def test_swap_contrast_is_a_listwise_loss_over_pmi_per_token_and_skips_rows_without_variants():
    from vtsearch.train.objective import swap_contrast

    torch.manual_seed(0)
    scorer = FusionScorer(WORLD)
    red, blue = COLOURS[0], COLOURS[2]
    images = torch.stack([world_image(red, blue, (0, 1)), world_image(blue, red, (1, 1))])
    captions = [world_text(red, LEFT, blue), world_text(blue, LEFT, red)]
    swapped = world_text(blue, LEFT, red)  # row 0's colours traded; row 1 has no variant
    batch = TextBatch.pad(*zip(*captions, swapped))  # as caption_loss batches them: captions, then variants
    read = scorer.read_image(images)
    given_image = scorer.token_log_probs(scorer.attend(batch, read[[0, 1, 0]])[0], batch)
    prior = scorer.text_log_likelihood(batch, None)
    loss = swap_contrast(given_image, prior, batch.lengths, 2, [(0, 0)])
    own = TextBatch.pad([captions[0][0]], [captions[0][1]])
    one = TextBatch.pad([swapped[0]], [swapped[1]])
    with torch.no_grad():
        pmi = [(scorer.text_log_likelihood(text, images[:1]) - scorer.text_log_likelihood(text, None)) / 4
               for text in (own, one)]  # 4 tokens predicted
        pair = torch.cat(pmi)
        expected = -torch.log_softmax(pair, dim=0)[0] / 2  # row 1 adds log 1 = 0
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    grads = [p.grad for p in scorer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert scorer.no_image.grad is None  # the term trains p(text | image), not the prior


def test_an_adaptive_head_is_a_distribution_over_every_class():
    """Common classes from one softmax, rarer ones through their band's: over all classes
    the probabilities of a state sum to 1, and every class is reachable."""
    torch.manual_seed(0)
    head = AdaptiveHead(16, 11, (4, 7))
    states = torch.randn(3, 16)
    with torch.no_grad():
        every = torch.stack([head(states, torch.full((3,), label)) for label in range(11)], dim=1)  # (3, 11)
    torch.testing.assert_close(every.exp().sum(dim=1), torch.ones(3))
    assert head_cutoffs(1024) == () and head_cutoffs(1500) == (512,) and head_cutoffs(4097) == (512, 2048)
    with pytest.raises(ValueError):
        AdaptiveHead(16, 11, (4, 12))


@pytest.mark.parametrize("config", [CONFIG, CAPTION_CONFIG, ADAPTIVE_WORLD], ids=["match", "caption", "adaptive"])
def test_one_query_against_many_images_scores_as_its_copies(config):
    """A search's batch is one text seen K times (a view): the scorer runs that text's
    steps before it first reads an image once, with the scores of K real copies."""
    scorer = FusionScorer(config).eval()
    dims = config.text_dim, config.prefix + config.grid ** 2, config.region_dim
    batch = TextBatch.pad([torch.randn(5, dims[0])], [torch.tensor([1, 10, 20, 12, 2])])
    regions = torch.randn(4, *dims[1:])
    with torch.no_grad():
        viewed, viewed_attention = scorer(batch.expand(4), regions, need_weights=True)
        copied, copied_attention = scorer(batch.repeat_each(4), regions, need_weights=True)
    torch.testing.assert_close(viewed, copied, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(viewed_attention[0], copied_attention[0], atol=1e-6, rtol=1e-5)
