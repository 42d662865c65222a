"""CoCa's text decoder as the pretrained stage-2 scorer, with a tiny random CoCa through
``local-dir:`` (its decoder's output projection initialised here: open_clip leaves it
empty for a model created without weights)."""

import json

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner

from conftest import load_script, make_images
from vtsearch import EncoderSpec, Index, IngestOptions
from vtsearch.cli import main
from vtsearch.config import RegionLayout
from vtsearch.encoder import Encoder
from vtsearch.encoder.coca import broken_contrastive_head, has_text_decoder
from vtsearch.errors import ModelLoadError
from vtsearch.query import decoder as decoder_module
from vtsearch.query.decoder import DecoderConfig, DecoderReranker, fuse_logits, fuse_standardised

CPU = torch.device("cpu")
WIDTH, VISION_WIDTH, QUERIES = 32, 48, 10  # the pooler makes QUERIES - 1 image tokens
TINY_COCA = {
    "embed_dim": WIDTH, "custom_text": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": VISION_WIDTH, "head_width": 16, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_queries": QUERIES, "attn_pooler_heads": 2,
                   "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 2},
}
TEXTS = ["a red square", "a blue circle left of a green square on a white ground", "dog"]


def write_coca(folder, seed=0):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_COCA, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")  # no weights yet: random
    torch.nn.init.normal_(model.text_decoder.text_projection, std=WIDTH ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def coca_dir(tmp_path_factory):
    return write_coca(tmp_path_factory.mktemp("coca") / "model")


@pytest.fixture(scope="module")
def encoder(coca_dir):
    return Encoder.load(EncoderSpec.parse(f"local-dir:{coca_dir}"), CPU, precision="fp32")


def pixels(count, seed=0):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def ids_of(encoder, text):
    return encoder.encode_text_features([text]).ids[0]


def test_region_layout_with_a_prefix_round_trips():
    layout = RegionLayout(grid=7, dim=768, prefix=1)
    assert layout.regions == 50 and layout.row_bytes == 50 * 768 * 2
    assert RegionLayout.from_dict(layout.to_dict()) == layout
    old = {"grid": 7, "dim": 512, "stored": True, "dtype": "float16", "bytes_per_image": 50176}
    assert RegionLayout.from_dict(old).prefix == 0 and "prefix" not in RegionLayout.from_dict(old).to_dict()
    assert RegionLayout.from_dict(old).source == "final" and "source" not in RegionLayout.from_dict(old).to_dict()
    blocks = RegionLayout(grid=7, dim=768, source="blocks")
    assert RegionLayout.from_dict(blocks.to_dict()) == blocks and blocks.to_dict()["source"] == "blocks"


def test_regions_are_the_tokens_before_the_pooler(encoder):
    """Stage 1 is the model's own vector; the regions are the class token and patches the
    pooler reads, so pooling them again gives the decoder exactly what CoCa gives it."""
    assert has_text_decoder(encoder.model) and encoder.image.prefix == 1
    images = pixels(3)
    with torch.no_grad():
        pooled, regions = encoder.image(images, regions=True)
        latent, tokens = encoder.model._encode_image(images, normalize=False)
        decoder = DecoderReranker(encoder.model).decoder
        torch.testing.assert_close(decoder.image_tokens(regions), tokens)
    assert regions.shape == (3, 1 + 16, VISION_WIDTH) and tokens.shape == (3, QUERIES - 1, WIDTH)
    torch.testing.assert_close(pooled, latent)


@pytest.mark.parametrize("unprojected", [False, True])
def test_scores_are_the_caption_likelihood_and_ignore_padding(encoder, monkeypatch, unprojected):
    """The decoder reads the real tokens only; open_clip's own forward on the 76 padded
    tokens gives the same log-likelihood (three images: the normalisers are taken two
    texts at a time), with the image's keys and values projected or not."""
    monkeypatch.setattr(decoder_module, "_unprojected_is_cheaper", lambda *_: unprojected)
    model, images = encoder.model, pixels(3, seed=1)
    padded = encoder.tokenizer([TEXTS[1]] * 3)  # (3, 76)
    with torch.no_grad():
        out = model(images, padded)  # logits (3, 75, V), aligned with labels = padded[:, 1:]
        log_probs = out["logits"].log_softmax(-1).gather(-1, out["labels"][..., None]).squeeze(-1)
        expected = (log_probs * (out["labels"] != 0)).sum(dim=1)
        _, regions = encoder.image(images, regions=True)
    reranker = DecoderReranker(model, DecoderConfig(weight=1.0))
    output = reranker.rerank(None, ids_of(encoder, TEXTS[1]), np.zeros(3, dtype=np.float32), regions)
    np.testing.assert_allclose(output.match_logit, expected.numpy(), rtol=1e-4, atol=1e-3)


def test_zero_output_columns_are_counted_not_multiplied(tmp_path, encoder):
    """A CoCa whose output words were kept to its captions' (the other columns zero, as
    ``train_coca.py --vocabulary captions`` saves it) scores as open_clip's own forward
    over all 49,408 words, and the scorer normalises over the live columns only."""
    from safetensors.torch import load_file, save_file

    folder = write_coca(tmp_path / "kept", seed=4)
    weights = load_file(str(folder / "open_clip_model.safetensors"))
    kept = torch.unique(torch.cat([encoder.tokenizer(TEXTS).reshape(-1), torch.arange(40)]))
    projection = torch.zeros_like(weights["text_decoder.text_projection"])
    projection[:, kept] = weights["text_decoder.text_projection"][:, kept]
    save_file({**weights, "text_decoder.text_projection": projection}, str(folder / "open_clip_model.safetensors"))
    pruned = Encoder.load(EncoderSpec.parse(f"local-dir:{folder}"), CPU, precision="fp32")
    images = pixels(3, seed=5)
    padded = pruned.tokenizer([TEXTS[1]] * 3)
    with torch.no_grad():
        out = pruned.model(images, padded)
        log_probs = out["logits"].log_softmax(-1).gather(-1, out["labels"][..., None]).squeeze(-1)
        expected = (log_probs * (out["labels"] != 0)).sum(dim=1)
        _, regions = pruned.image(images, regions=True)
    reranker = DecoderReranker(pruned.model, DecoderConfig(weight=1.0))
    assert reranker.decoder.output.zero_columns == 49408 - len(kept)
    assert reranker.decoder.output.live_columns().shape == (WIDTH, len(kept))
    output = reranker.rerank(None, ids_of(pruned, TEXTS[1]), np.zeros(3, dtype=np.float32), regions)
    np.testing.assert_allclose(output.match_logit, expected.numpy(), rtol=1e-4, atol=1e-3)
    assert DecoderReranker(encoder.model).decoder.output.zero_columns == 0  # random weights: none


def test_the_caption_vocabulary_trains_what_the_full_softmax_would(monkeypatch):
    """``train_coca.py --vocabulary captions``: the loss over the kept words plus one
    constant for the zero columns is the loss over all 49,408, and the saved projection
    is zero outside the kept words."""
    train_coca = load_script("train_coca", monkeypatch)
    config = train_coca.model_config(image_size=32, patch_size=16, context_length=8)
    torch.manual_seed(0)
    model = train_coca.build(config, "cpu")
    tokens = open_clip.SimpleTokenizer(context_length=8)(["a red square", "a blue circle", "two green stars"])
    words = train_coca.CaptionVocabulary(torch.as_tensor(tokens), size=49408)
    assert words.kept[0] == 0 and set(torch.as_tensor(tokens).reshape(-1).tolist()) == set(words.kept.tolist())
    decoder = model.text_decoder
    with torch.no_grad():
        zero = torch.ones(49408, dtype=torch.bool)
        zero[words.kept] = False
        decoder.text_projection[:, zero] = 0
        latent, embs = model._encode_image(torch.randn(3, 3, 32, 32))
        loss = open_clip.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0)
        out = model(None, tokens, image_latent=latent, image_embs=embs)
        full = loss(out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"])
        words.restrict(decoder)
        assert decoder.text_projection.shape == (128, len(words.kept))
        out = model(None, tokens, image_latent=latent, image_embs=embs)
        kept = loss(out["image_features"], out["text_features"], words.logits(out["logits"]),
                    words.labels(out["labels"]), out["logit_scale"])
        assert float(kept[1]) == pytest.approx(float(full[1]), rel=1e-4)  # fp32 sums over 49,408
        words.expand(decoder)
    assert decoder.text_projection.shape == (128, 49408)
    assert not decoder.text_projection[:, zero].any() and decoder.text_projection[:, words.kept].any()


def test_probe_decoder_splits_the_search_score_by_token(encoder, monkeypatch):
    """``scripts/probe_decoder.py``'s per-token losses are the search's decoder score, split:
    over texts of different lengths batched together, they add up to it."""
    probe = load_script("probe_decoder", monkeypatch)
    reranker = DecoderReranker(encoder.model)
    with torch.no_grad():
        _, regions = encoder.image(pixels(3, seed=3), regions=True)
    ids = [ids_of(encoder, text) for text in TEXTS]
    losses = probe.word_losses(reranker, regions, ids, lambda token: encoder.tokenizer.decode([token]).strip())
    expected = [reranker.rerank(None, row, np.zeros(1, dtype=np.float32), region[None]).match_logit[0]
                for row, region in zip(ids, regions)]
    assert sum(len(values) for values in losses.values()) == sum(len(row) - 1 for row in ids)
    assert sum(sum(values) for values in losses.values()) == pytest.approx(-sum(expected), rel=1e-4)
    assert "square" in losses and len(losses["square"]) == 2


def test_position_codes_are_met_by_tokens_that_hold_them_whatever_else_they_hold(monkeypatch):
    """``train_coca.py --position-weight``: the loss asks for each token's code in a fixed
    subspace and leaves the rest of the token (its content) free."""
    train_coca = load_script("train_coca", monkeypatch)
    codes = train_coca.PositionCodes(tokens=17, width=48, dims=8, scale=2.0, seed=0)
    torch.testing.assert_close(codes.basis.T @ codes.basis, torch.eye(8), atol=1e-5, rtol=0)
    content = torch.randn(3, 17, 48)
    content = content - content @ codes.basis @ codes.basis.T  # nothing in the code's subspace
    holding = content + codes.codes @ codes.basis.T
    assert float(codes.loss(holding)) < 1e-8
    assert float(codes.loss(content)) == pytest.approx(float(codes.codes.pow(2).mean()), rel=1e-4)
    assert float(codes.loss(holding.roll(1, dims=1))) > 1.0  # each code one place off


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [(1, 5), (5, 5), (5, 1)])
def test_attention_without_projecting_keys_and_values_is_the_modules(packed, rows):
    """Cross-attention with the keys' and values' projections moved to the queries' side
    gives ``nn.MultiheadAttention``'s output, for one text row or one image row shared by
    all, packed or separate input weights (a context of another width), biases included."""
    torch.manual_seed(0)
    width, context_width = 64, 64 if packed else 48
    attention = torch.nn.MultiheadAttention(width, 4, batch_first=True, kdim=context_width, vdim=context_width)
    torch.nn.init.normal_(attention.in_proj_bias)
    (texts, images), batch = rows, max(rows)
    x, context = torch.randn(texts, 7, width), torch.randn(images, 40, context_width)
    with torch.no_grad():
        expected = attention(x.expand(batch, -1, -1), context.expand(batch, -1, -1), context.expand(batch, -1, -1),
                             need_weights=False)[0]
        torch.testing.assert_close(decoder_module._attend_unprojected(attention, x, context), expected)
        torch.testing.assert_close(decoder_module._attend(attention, x, context), expected)


def test_keys_and_values_go_unprojected_where_that_costs_less():
    """ViT-B-32's CoCa decoder (width 512, 8 heads, 255 image tokens): a search's 11 text
    tokens against 20 candidates leave them unprojected; a match's one image shared by 20
    texts projects them once."""
    attention = torch.nn.MultiheadAttention(512, 8, batch_first=True)
    search = decoder_module._unprojected_is_cheaper(attention, torch.zeros(20, 11, 512), torch.zeros(20, 255, 512))
    match = decoder_module._unprojected_is_cheaper(attention, torch.zeros(20, 11, 512), torch.zeros(1, 255, 512))
    assert search and not match


def test_the_decoder_reads_the_image(encoder):
    with torch.no_grad():
        _, regions = encoder.image(pixels(4, seed=2), regions=True)
    output = DecoderReranker(encoder.model).rerank(None, ids_of(encoder, TEXTS[0]), np.zeros(4), regions)
    assert np.isfinite(output.match_logit).all() and np.ptp(output.match_logit) > 1e-3
    assert sorted(output.order.tolist()) == [0, 1, 2, 3]


def test_the_decoder_reads_stage_ones_tower_states_as_its_own_run(encoder):
    """Stage 1 ran the text tower on the padded context; the states it keeps for the
    decoder (``hidden``) score as the tower run again on the real tokens, for a search's
    one text and a match's several (padded together)."""
    with torch.no_grad():
        _, regions = encoder.image(pixels(3, seed=6), regions=True)
    features = encoder.encode_text_features(TEXTS)
    assert [row.shape for row in features.hidden] == [(len(ids), WIDTH) for ids in features.ids]
    reranker = DecoderReranker(encoder.model, DecoderConfig(prior="none"))
    for ids, hidden in zip(features.ids, features.hidden):
        again = reranker.rerank(None, ids, np.zeros(3), regions).match_logit
        kept = reranker.rerank(None, ids, np.zeros(3), regions, hidden=hidden).match_logit
        np.testing.assert_allclose(kept, again, rtol=1e-5, atol=1e-4)
    again = reranker.rerank_texts(None, features.ids, np.zeros(3), regions[0]).match_logit
    kept = reranker.rerank_texts(None, features.ids, np.zeros(3), regions[0], hidden=features.hidden).match_logit
    np.testing.assert_allclose(kept, again, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        reranker.rerank(None, features.ids[0], np.zeros(3), regions, hidden=features.hidden[1])


def test_hooked_blocks_run_as_modules_with_the_same_scores(encoder):
    """Attention is computed from the weights unless a hook waits on a block or the
    pooler: then open_clip's modules run, and score the same."""
    with torch.no_grad():
        _, regions = encoder.image(pixels(3, seed=7), regions=True)
    reranker = DecoderReranker(encoder.model, DecoderConfig(prior="none"))
    ids = ids_of(encoder, TEXTS[1])
    computed = reranker.rerank(None, ids, np.zeros(3), regions).match_logit
    calls = []
    handles = [module.register_forward_hook(lambda *_: calls.append(1))
               for module in (encoder.model.text_decoder.cross_attn[0], encoder.model.visual.attn_pool)]
    try:
        modules = reranker.rerank(None, ids, np.zeros(3), regions).match_logit
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == 2
    np.testing.assert_allclose(modules, computed, rtol=1e-5, atol=1e-4)
    assert reranker.decoder.output.log_normalisers(torch.zeros(2, 0, WIDTH)).shape == (2, 0)


def test_match_scores_each_text_in_a_batch_as_alone(encoder):
    """K texts of different lengths padded together score as each would alone."""
    with torch.no_grad():
        _, regions = encoder.image(pixels(1, seed=3), regions=True)
    reranker = DecoderReranker(encoder.model, DecoderConfig(prior="none"))
    ids = [ids_of(encoder, text) for text in TEXTS]
    together = reranker.rerank_texts(None, ids, np.zeros(3), regions[0]).match_logit
    alone = [reranker.rerank_texts(None, [row], np.zeros(1), regions[0]).match_logit[0] for row in ids]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-4)
    for prior in ("null-image", "length"):
        reranker = DecoderReranker(encoder.model, DecoderConfig(prior=prior))
        scores = reranker.rerank_texts(None, ids, np.zeros(3), regions[0])
        assert np.isfinite(scores.match_logit).all() and not np.allclose(scores.match_logit, together)


def test_the_length_prior_scores_each_text_as_length_tokens_at_its_mean(encoder):
    """``prior: length`` is each text's log-likelihood per scored token times
    ``length_tokens``; a manifest from before that setting keeps the plain mean."""
    with torch.no_grad():
        _, regions = encoder.image(pixels(1, seed=8), regions=True)
    ids = [ids_of(encoder, text) for text in TEXTS]
    raw = DecoderReranker(encoder.model, DecoderConfig(prior="none")).rerank_texts(
        None, ids, np.zeros(3), regions[0]).match_logit
    scored = np.array([len(row) - 1 for row in ids])
    for tokens in (1.0, 4.0):
        reranker = DecoderReranker(encoder.model, DecoderConfig(prior="length", length_tokens=tokens))
        length = reranker.rerank_texts(None, ids, np.zeros(3), regions[0]).match_logit
        np.testing.assert_allclose(length, raw * tokens / scored, rtol=1e-5, atol=1e-5)
    assert DecoderConfig.from_dict(DecoderConfig().to_dict()).length_tokens == 4.0
    assert DecoderConfig.from_dict({"weight": 1.0, "prior": "length"}).length_tokens == 1.0


def test_fusion_adds_the_two_log_scores():
    """The default: contrastive logit + caption log-likelihood, on stage 1's scale; a
    pair's final score does not depend on the rest of the shortlist."""
    stage1, score = np.array([0.30, 0.29, 0.20]), np.array([-40.0, -10.0, -30.0])
    np.testing.assert_allclose(fuse_logits(stage1, score, 0.0, 100.0), stage1, rtol=1e-6)  # weight 0: stage 1
    final = fuse_logits(stage1, score, 1.0, 100.0)
    np.testing.assert_allclose(final, (100 * stage1 + score) / 100, rtol=1e-6)
    np.testing.assert_allclose(fuse_logits(stage1[:1], score[:1], 1.0, 100.0), final[:1], rtol=1e-6)


def test_fusion_can_standardise_both_scores():
    stage1, score = np.array([0.30, 0.29, 0.20]), np.array([-40.0, -10.0, -30.0])
    np.testing.assert_allclose(fuse_standardised(stage1, score, 0.0), stage1, rtol=1e-6)  # weight 0: stage 1
    np.testing.assert_allclose(fuse_standardised(stage1[:1], score[:1], 1.0), stage1[:1], rtol=1e-6)  # one
    z = lambda values: (values - values.mean()) / values.std()  # noqa: E731
    final = fuse_standardised(stage1, score, 1.0)
    assert np.argsort(-final).tolist() == np.argsort(-(z(stage1) + z(score))).tolist() == [1, 0, 2]
    assert np.isclose(final.mean(), stage1.mean(), atol=1e-6)  # still on stage 1's scale


def test_caption_only_weights_are_refused_for_stage_one(tmp_path):
    refused = EncoderSpec("coca_ViT-B-32", "mscoco_finetuned_laion2b_s13b_b90k")
    assert "captioning only" in broken_contrastive_head(refused)
    assert broken_contrastive_head(EncoderSpec.parse("hf-hub:laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k"))
    assert broken_contrastive_head(EncoderSpec("coca_ViT-B-32", "laion2b_s13b_b90k")) is None
    assert broken_contrastive_head(EncoderSpec()) is None
    with pytest.raises(ModelLoadError, match="captioning only"):  # refused before anything loads
        Index.create(tmp_path / "index", refused, device="cpu")
    assert not (tmp_path / "index").exists()


@pytest.fixture(scope="module")
def coca_index(tmp_path_factory, encoder):
    folder = tmp_path_factory.mktemp("coca_index")
    make_images(folder / "photos", 8)
    index = Index.create(folder / "index", encoder=encoder, region_grid=2)  # the grid is the decoder's own
    assert index.add([folder / "photos"], IngestOptions(workers=0, batch_size=4)).indexed == 8
    yield index
    index.close()


def test_a_coca_index_reranks_with_its_decoder_untrained(coca_index, encoder, monkeypatch):
    layout, summary = coca_index.manifest.regions, coca_index.manifest.reranker
    assert (layout.grid, layout.prefix, layout.dim) == (4, 1, VISION_WIDTH)
    assert summary.scorer == "coca-decoder" and summary.config == DecoderConfig().to_dict()
    reranker = coca_index.reranker
    assert isinstance(reranker, DecoderReranker) and reranker.changes_order and not reranker.is_trained
    stored = coca_index.region_source.regions([1, 2])  # the region store's round trip
    path = coca_index.image_row(1).path
    from vtsearch.decode import decode_file
    from vtsearch.records import ScannedFile
    decoded = decode_file(ScannedFile(path, 0, 0), encoder.decode_config(), encoder.preprocess)
    with torch.no_grad():
        _, fresh = encoder.image(decoded.pixels[None], regions=True)
    assert stored.shape == (2, 17, VISION_WIDTH)
    torch.testing.assert_close(stored[0], fresh[0], atol=2e-2, rtol=1e-2)  # fp16 on disk
    with monkeypatch.context() as patch:  # a search's decoder reads the states stage 1 kept: no tower run
        patch.setattr(reranker.decoder, "text_states", lambda ids: pytest.fail("the text tower ran again"))
        response = coca_index.query(TEXTS[0], k=3)
    assert response.reranked and len(response.results) == 3 and "rerank" in response.timings_ms
    assert coca_index._context().shortlist(None, True) == DecoderConfig().shortlist_cpu
    plain = coca_index.query(TEXTS[0], k=8, rerank=False)
    assert not plain.reranked
    matched = coca_index.match(1, k=3, labels=TEXTS)
    assert matched.reranked and len(matched.results) == 3


def test_bench_query_times_both_paths_of_one_index(coca_index, monkeypatch):
    """``scripts/bench_query.py``: the same queries with and without stage 2, medians and
    their ratio."""
    bench = load_script("bench_query", monkeypatch)
    row = bench.measure(bench.in_process(coca_index), bench.load_queries(None, 4), k=3, recall_k=5)
    assert row["recall_k"] == 5 and row["stage1_ms"] > 0 and row["reranked_ms"] > 0
    assert row["ratio"] == pytest.approx(row["reranked_ms"] / row["stage1_ms"], rel=0.05)


def test_bench_query_times_a_served_index_over_http(coca_index, monkeypatch):
    """``--http``: the same searches posted to a real ``vtsearch serve`` of the index."""
    bench = load_script("bench_query", monkeypatch)
    rows = bench.measure_all(coca_index, coca_index.path, True, bench.load_queries(None, 4), k=3, sizes=[5, 8])
    assert [row["recall_k"] for row in rows] == [5, 8]
    assert all(row["stage1_ms"] > 0 and row["reranked_ms"] > 0 for row in rows)


def test_explain_shows_the_decoders_attention_on_the_patches(coca_index, encoder):
    attention = coca_index.explain(1, TEXTS[1])
    weights = np.array(attention.weights)
    assert weights.shape == (len(ids_of(encoder, TEXTS[1])), 16) and attention.grid == 4
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-4)
    assert attention.reranks


def test_info_names_the_scorer(coca_index):
    runner = CliRunner()
    result = runner.invoke(main, ["info", "--index", str(coca_index.path)], catch_exceptions=False)
    assert result.exit_code == 0 and "CoCa text decoder" in result.output and "as 4 tokens" in result.output
    shown = json.loads(runner.invoke(main, ["info", "--index", str(coca_index.path), "--json"]).stdout)
    assert shown["reranker"]["scorer"] == "coca-decoder" and shown["regions"]["prefix"] == 1


def test_weight_zero_is_stage_one(coca_index):
    """With weight 0 the decoder would not change the order, so a query skips it."""
    reranker = DecoderReranker(coca_index.encoder.model, DecoderConfig(weight=0.0))
    assert not reranker.changes_order
    coca_index._reranker = reranker
    try:
        response = coca_index.query(TEXTS[1], k=8)
        assert not response.reranked
        assert [r.score for r in response.results] == [r.stage1_score for r in response.results]
    finally:
        coca_index._reranker = None


def test_train_reranker_fits_a_fusion_scorer_over_the_cocas_tokens(tmp_path, encoder):
    """Fine-tuning stays possible: on a CoCa index, train-reranker trains the fusion scorer
    over the tokens the decoder reads (class token first, with a position of its own),
    and the trained scorer takes the decoder's place."""
    from vtsearch.query.rerank import Reranker
    from vtsearch.train import Pair, TrainOptions, train_reranker

    paths = make_images(tmp_path / "photos", 12)
    words = ["red", "green", "blue", "yellow"]
    pairs = [Pair(str(path), f"a {words[i % 4]} thing number {i}") for i, path in enumerate(paths)]
    with Index.create(tmp_path / "index", encoder=encoder) as index:
        index.add([tmp_path / "photos"], IngestOptions(workers=0, batch_size=4))
        reranker, report = train_reranker(index, pairs, TrainOptions(epochs=1, negatives=3, width=32, device="cpu"))
        config = reranker.scorer.config
        assert (config.prefix, config.grid, config.region_dim) == (1, 4, VISION_WIDTH) and report.best_epoch == 1
        index.save_reranker(reranker)
        assert isinstance(index.reranker, Reranker) and index.manifest.reranker.scorer == "fusion"
        assert np.array(index.explain(1, TEXTS[0]).weights).shape[1] == 16  # the grid's share
        assert len(index.query(TEXTS[0], k=3).results) == 3


def test_the_decoder_phase_trains_a_fresh_pooler_and_decoder_on_frozen_towers(monkeypatch):
    """``train_coca.py --decoder-epochs``: the image trunk and the text tower keep their
    weights, the pooler and the decoder start afresh and learn (the loss falls)."""
    train_coca = load_script("train_coca", monkeypatch)
    monkeypatch.setattr(train_coca, "DECODER_BATCH", 16)
    config = train_coca.model_config(image_size=32, patch_size=16, context_length=8)
    torch.manual_seed(0)
    model = train_coca.build(config, "cpu")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    captions = [[f"a {colour} square"] for colour in ("red", "blue", "green", "white")] * 8
    pixels = torch.randn(len(captions), 3, 32, 32)
    tokens = torch.from_numpy(np.asarray(open_clip.SimpleTokenizer(context_length=8)([c[0] for c in captions])))[None]
    losses = train_coca.train_decoder(model, config, pixels, captions, tokens, epochs=4,
                                      caption_weight=2.0, device="cpu", seed=0)
    after = model.state_dict()
    kept = [name for name in before if name.startswith(("visual.transformer", "visual.conv1", "text."))]
    renewed = [name for name in before if name.startswith(("visual.attn_pool", "text_decoder."))]
    assert kept and renewed
    assert all(torch.equal(before[name], after[name]) for name in kept)
    assert all(not torch.equal(before[name], after[name]) for name in renewed)
    assert losses[-1] < losses[0]


def test_a_decoder_phase_may_start_from_a_model_with_another_pooler(monkeypatch, tmp_path):
    """``--init`` a saved CoCa, then ``--decoder-epochs`` with another ``--image-tokens``:
    the towers come from the saved model, the pooler (renewed anyway) takes the new shape."""
    train_coca = load_script("train_coca", monkeypatch)
    torch.manual_seed(0)
    saved = train_coca.build(train_coca.model_config(image_size=32, patch_size=16, context_length=8), "cpu")
    train_coca.save(saved, train_coca.model_config(image_size=32, patch_size=16, context_length=8), 32, tmp_path)
    wider = train_coca.build(train_coca.model_config(32, 16, 8, image_tokens=8), "cpu")
    train_coca.load_init(wider, tmp_path, renewed=True)
    assert wider.visual.attn_pool.query.shape[0] == 9
    assert torch.equal(wider.visual.conv1.weight, saved.visual.conv1.weight)
    assert torch.equal(wider.text.token_embedding.weight, saved.text.token_embedding.weight)
    with pytest.raises(RuntimeError):
        train_coca.load_init(wider, tmp_path, renewed=False)
