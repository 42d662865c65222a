"""Every open_clip tower kind through both stages, with tiny random models (tests/tiny_towers.py).

Each kind loads through ``local-dir:``, gives the vectors its own model gives, indexes a
few images, searches, and reranks with a scorer of the input widths read from it.
"""

import importlib.util

import numpy as np
import open_clip
import pytest
import torch

from conftest import make_images, need
from tiny_towers import CONFIGS, EMBED, NEEDS_TRANSFORMERS, WIDTH, write_tower
from vtsearch import EncoderSpec, Index, IngestOptions
from vtsearch.encoder import Encoder
from vtsearch.encoder.weights import load_open_clip, model_config, needs_quick_gelu, needs_reparameterization
from vtsearch.fusion import FusionConfig
from vtsearch.query.rerank import Reranker

CPU = torch.device("cpu")
TEXTS = ["a red square", "a blue circle left of a green one"]
# (region grid, region width, prefix tokens) per kind: None where the tower has no regions
REGIONS = {
    "clip_vit": (4, WIDTH, 0), "clip_eos": (4, WIDTH, 0), "hf_text": (4, WIDTH, 0),  # the last block's tokens
    "timm_vit": (4, EMBED, 0), "timm_eva": (4, EMBED, 0),
    "timm_fastvit": (8, EMBED, 0),  # an 8 x 8 map kept: no whole factor brings it nearer 7
    "timm_convnext": (4, EMBED, 0),
    "timm_pe": (4, WIDTH, 0), "timm_siglip": (4, WIDTH, 0),  # MAP-pooled: the trunk's own width
    "coca": (4, WIDTH, 1),  # the tokens before its attentional pooler, class token first: tests/test_coca.py
}


def tower(kind: str, tmp_path) -> tuple[Encoder, str]:
    if kind in NEEDS_TRANSFORMERS:
        need(importlib.util.find_spec("transformers") is not None,
             "transformers (the multilingual extra: pip install -e '.[multilingual]')")
    folder = write_tower(kind, tmp_path / kind)
    model = f"local-dir:{folder}"
    return Encoder.load(EncoderSpec.parse(model), CPU, precision="fp32"), model


def unit(rows: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(rows.float(), dim=-1).numpy()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_vectors_are_the_models_own(kind, tmp_path):
    """Stage 1 is the model's own encode_image / encode_text, whatever the tower kind (a
    FastViT's fused blocks included), so its published quality carries over."""
    encoder, model = tower(kind, tmp_path)
    reference = open_clip.create_model(model).eval()  # as open_clip builds it: not fused, no token outputs
    pixels = torch.randn(3, 3, encoder.image_size, encoder.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = unit(reference.encode_image(pixels))
        texts = unit(reference.encode_text(open_clip.get_tokenizer(model)(TEXTS)))
    np.testing.assert_allclose(encoder.encode_images(pixels), images, atol=2e-5)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), texts, atol=2e-5)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_text_states_for_stage_two(kind, tmp_path):
    """Token states run through the last real token (the tokenizer's own padding id: 1 for
    XLM-R, whose start token is 0) in the width the scorer is told."""
    encoder, model = tower(kind, tmp_path)
    features = encoder.encode_text_features(TEXTS)
    padded = open_clip.get_tokenizer(model)(TEXTS)
    for states, ids, row in zip(features.tokens, features.ids, padded):
        length = len(ids)
        assert states.shape == (length, encoder.text_token_dim)
        assert ids.tolist() == row[:length].tolist() and int(ids[-1]) != encoder.pad_id
        assert (row[length:] == encoder.pad_id).all()
    assert encoder.text_token_dim == encoder.embed_dim + encoder.word_dim


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_index_search_and_rerank(kind, tmp_path):
    encoder, _ = tower(kind, tmp_path)
    make_images(tmp_path / "photos", 6)
    with Index.create(tmp_path / "index", encoder=encoder) as index:
        assert index.add([tmp_path / "photos"], IngestOptions(workers=0, batch_size=4)).indexed == 6
        assert len(index.query(TEXTS[0], k=3, rerank=False).results) == 3
        layout = index.manifest.regions
        if REGIONS[kind] is None:
            assert layout is None and index.reranker is None and encoder.regions_unavailable
            assert not index.query(TEXTS[0], k=3).reranked
            return
        assert (layout.grid, layout.dim, layout.prefix) == REGIONS[kind] and encoder.regions_unavailable is None
        assert index.region_source.regions([1, 2]).shape == (2, layout.prefix + layout.grid ** 2, layout.dim)
        if kind == "coca":  # its own text decoder reranks, untrained
            assert index.reranker.scorer_name == "coca-decoder"
            return
        reranker = Reranker.untrained(FusionConfig(text_dim=encoder.text_token_dim, region_dim=layout.dim,
                                                   grid=layout.grid, prefix=layout.prefix,
                                                   max_tokens=encoder.context_length), seed=3)
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(0.5)
        index.save_reranker(reranker)
        response = index.query(TEXTS[1], k=3, recall_k=6)
        assert response.reranked and len(response.results) == 3


def test_fastvit_regions_average_to_its_vector(tmp_path):
    """Average pooling and the linear head commute: the regions are exact."""
    encoder, _ = tower("timm_fastvit", tmp_path)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, regions = encoder.image(pixels, regions=True)
    assert regions.shape == (2, 64, EMBED)
    torch.testing.assert_close(regions.mean(dim=1), pooled, atol=1e-5, rtol=1e-5)


def test_mobileclip_is_fused_at_load(tmp_path):
    encoder, _ = tower("timm_fastvit", tmp_path)
    blocks = [m for m in encoder.model.visual.modules() if hasattr(m, "reparam_conv")]
    assert blocks and all(block.reparam_conv is not None for block in blocks)
    assert needs_reparameterization(encoder.model.visual)
    plain, _ = tower("clip_vit", tmp_path)
    assert not needs_reparameterization(plain.model.visual)


@pytest.mark.parametrize("model, tag, quick", [
    ("ViT-B-32", "openai", True), ("ViT-B-16", "dfn2b", True), ("ViT-L-14", "metaclip_fullcc", True),
    ("ViT-B-32", "laion400m_e32", True), ("ViT-B-32", "laion2b_s34b_b79k", False),
    ("ViT-B-32-quickgelu", "openai", False),  # already the QuickGELU architecture
])
def test_quick_gelu_weights_get_the_quick_gelu_architecture(model, tag, quick):
    spec = EncoderSpec(model, tag)
    assert needs_quick_gelu(spec) is quick
    assert model_config(spec) == open_clip.get_model_config(f"{model}-quickgelu" if quick else model)


def test_loading_openai_weights_builds_quick_gelu(monkeypatch):
    """What reaches open_clip for ``--model ViT-B-32 --pretrained openai`` (nothing downloaded)."""
    calls = {}

    def create(name, pretrained=None, **options):
        calls.update(name=name, pretrained=pretrained, **options)
        raise RuntimeError("stop before any download")

    monkeypatch.setattr("vtsearch.encoder.weights.check_weights_available", lambda spec: None)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    with pytest.raises(Exception):
        load_open_clip(EncoderSpec("ViT-B-32", "openai"))
    assert calls == {"name": "ViT-B-32", "pretrained": "openai", "force_quick_gelu": True}
