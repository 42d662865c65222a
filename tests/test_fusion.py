import numpy as np
import pytest
import torch

from vtsearch.fusion import FusionConfig, FusionScorer, pad_tokens
from vtsearch.query.rerank import Reranker

CONFIG = FusionConfig(text_dim=24, region_dim=40, grid=3, width=32, layers=2, heads=4)


def test_scorer_shapes_and_attention_maps():
    scorer = FusionScorer(CONFIG).eval()
    tokens, lengths = pad_tokens([torch.randn(5, 24), torch.randn(3, 24)])
    assert tokens.shape == (2, 5, 24) and lengths.tolist() == [5, 3]
    regions = torch.randn(2, 9, 40)
    match, attention = scorer(tokens, lengths, regions, need_weights=True)
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


def test_padding_does_not_change_a_score():
    scorer = FusionScorer(CONFIG).eval()
    short = torch.randn(3, 24)
    regions = torch.randn(1, 9, 40)
    alone, _ = scorer(short[None], torch.tensor([3]), regions)
    padded, lengths = pad_tokens([short, torch.randn(6, 24)])
    together, _ = scorer(padded, lengths, regions.expand(2, -1, -1))
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)


def test_untrained_scorer_keeps_stage1_order_exactly():
    reranker = Reranker.untrained(CONFIG)
    assert float(reranker.scorer.rerank_weight.detach()) == 0.0
    stage1 = np.array([0.9, 0.8, 0.8, 0.5, 0.1], dtype=np.float32)  # a tie included
    output = reranker.rerank(torch.randn(4, 24), stage1, torch.randn(5, 9, 40))
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
    tokens, regions = torch.randn(4, 24), torch.randn(5, 9, 40)
    stage1 = np.linspace(0.5, 0.4, 5).astype(np.float32)
    first, second = reranker.rerank(tokens, stage1, regions), loaded.rerank(tokens, stage1, regions)
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
