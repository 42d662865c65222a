import json
import time

import numpy as np
import pytest
import torch

from vtsearch import EncoderSpec, ModelLoadError
from vtsearch.config import RegionLayout
from vtsearch.encoder import Encoder
from vtsearch.encoder.encoder import whole_factor_side
from vtsearch.errors import ModelMismatchError

CPU = torch.device("cpu")


def test_local_dir_model_loads_in_eval_mode_with_its_preprocessing(tiny_encoder, tiny_spec):
    assert tiny_encoder.spec == tiny_spec
    assert not tiny_encoder.model.training
    assert tiny_encoder.embed_dim == 64
    assert tiny_encoder.image_size == 64
    assert tiny_encoder.describe()["preprocess"]["size"] == [64, 64]


def test_vectors_are_unit_length_and_deterministic(tiny_encoder):
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = tiny_encoder.encode_images(pixels)
    assert first.shape == (3, 64) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(first, tiny_encoder.encode_images(pixels), atol=1e-6)
    texts = tiny_encoder.encode_texts(["a red cube", "a blue ball"])
    assert texts.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)


def test_regions_follow_the_layout_they_are_kept_in(tiny_encoder):
    """A new index keeps a ViT's last-block patch tokens; one made before keeps them
    after the final norm, projected (``final``), and still gets those; regions come
    pooled to the index's grid; a layout the tower cannot give is refused."""
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layout = tiny_encoder.region_layout()
    visual = tiny_encoder.model.visual
    assert (layout.prefix, layout.grid, layout.source, layout.dim) == (0, 4, "blocks", visual.conv1.out_channels)
    features = tiny_encoder.encode_image_features(pixels, layout)
    with torch.no_grad():  # in the encoder's own precision (bf16 on CPUs that have it)
        blocks = visual.transformer(visual._embeds(pixels.to(tiny_encoder.input_dtype)))
        final = (visual._pool(blocks)[1] @ visual.proj).float()
    torch.testing.assert_close(features.regions, blocks[:, 1:].float())
    np.testing.assert_allclose(features.vectors, tiny_encoder.encode_images(pixels), atol=1e-6)
    older = tiny_encoder.encode_image_features(pixels, RegionLayout(grid=4, dim=64, source="final"))
    torch.testing.assert_close(older.regions, final)
    pooled = tiny_encoder.encode_image_features(pixels, RegionLayout(grid=2, dim=layout.dim, source="blocks")).regions
    torch.testing.assert_close(pooled[:, :1], features.regions[:, [0, 1, 4, 5]].mean(1, keepdim=True))
    for wrong in (RegionLayout(grid=4, dim=layout.dim, prefix=1, source="blocks"),
                  RegionLayout(grid=4, dim=layout.dim + 1, source="blocks")):
        with pytest.raises(ModelMismatchError, match="do not fit"):
            tiny_encoder.encode_image_features(pixels, wrong)


@pytest.mark.parametrize("native, side", [(4, 4), (7, 7), (8, 8), (9, 9), (12, 6), (14, 7), (16, 8),
                                          (24, 8), (27, 7), (32, 7)])
def test_the_default_grid_pools_by_a_whole_factor(native, side):
    assert whole_factor_side(native, 7) == side


def test_spec_parsing():
    assert EncoderSpec.parse(None) == EncoderSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert EncoderSpec.parse("ViT-L-14", "openai") == EncoderSpec("ViT-L-14", "openai")
    assert EncoderSpec.parse("hf-hub:org/name", "ignored").pretrained == ""
    local = EncoderSpec.parse("local-dir:relative/model")
    assert local.model.startswith("local-dir:/") and local.pretrained == ""
    assert EncoderSpec.from_dict(local.to_dict() | {"future": 1}) == local


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no open_clip_config.json"),
        (lambda d: (d.mkdir(), (d / "open_clip_config.json").write_text("{}")), "no weights file"),
    ],
)
def test_local_dir_problems_are_named(tmp_path, make, message):
    folder = tmp_path / "model"
    make(folder)
    with pytest.raises(ModelLoadError, match=message):
        Encoder.load(EncoderSpec.parse(f"local-dir:{folder}"), CPU)


def test_damaged_local_config_is_a_clear_error(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"no_model_cfg": 1}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="cannot load"):
        Encoder.load(EncoderSpec.parse(f"local-dir:{tmp_path}"), CPU)


@pytest.mark.parametrize(
    "spec, message",
    [
        (EncoderSpec("ViT-Nope-1", "x"), "unknown model"),
        (EncoderSpec("ViT-B-32", "no_such_tag"), "unknown pretrained tag"),
        (EncoderSpec("ViT-B-32", ""), "no weights named"),
    ],
)
def test_bad_model_names_are_clear_errors(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        Encoder.load(spec, CPU)


@pytest.mark.parametrize("model", ["ViT-B-32", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"])
def test_offline_without_cached_weights_names_the_fix_at_once(tmp_path, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local-dir:") as caught:
        Encoder.load(EncoderSpec.parse(model), CPU)
    assert time.perf_counter() - started < 10
    assert "not in the local cache" in str(caught.value)


def test_weight_checks_refuse_a_changed_encoder(tiny_encoder, tmp_path):
    from vtsearch import ModelMismatchError
    from vtsearch.encoder import PROBE_AGREEMENT, check_probe, check_weights, probe_agreement

    probe = tiny_encoder.probe_vector()
    assert probe_agreement(tiny_encoder, probe) >= PROBE_AGREEMENT
    check_weights(tiny_encoder, tiny_encoder.embed_dim, probe, tmp_path)
    check_weights(tiny_encoder, tiny_encoder.embed_dim, None, tmp_path)
    check_probe(tiny_encoder, None, "on this Ray worker")
    other = [-x for x in probe]
    with pytest.raises(ModelMismatchError, match=r"now embeds text differently .*\(cosine -1\.000 on a fixed probe"):
        check_weights(tiny_encoder, tiny_encoder.embed_dim, other, tmp_path)
    with pytest.raises(ModelMismatchError, match="now gives 64-wide vectors.*holds 32-wide"):
        check_weights(tiny_encoder, 32, probe, tmp_path)
    with pytest.raises(ModelMismatchError, match="on this Ray worker embeds text differently from the index's"):
        check_probe(tiny_encoder, other, "on this Ray worker")
