"""bfloat16 on CPUs that have it, checked against float32; and models that need an extra."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_images
from vtsearch import EncoderSpec, Index, IngestOptions, ModelMismatchError
from vtsearch.cli import main
from vtsearch.cli.hints import one_line
from vtsearch.encoder import Encoder, check_weights
from vtsearch.encoder.precision import BF16_AGREEMENT, cpu_has_bf16, resolve_precision
from vtsearch.errors import MissingExtraError, VtsearchError

CPU = torch.device("cpu")
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def test_auto_chooses_bf16_only_where_the_cpu_has_it(tmp_path):
    (tmp_path / "with").write_text(WITH_BF16)
    (tmp_path / "without").write_text(WITHOUT)
    assert cpu_has_bf16(tmp_path / "with") and not cpu_has_bf16(tmp_path / "without")
    assert not cpu_has_bf16(tmp_path / "missing")
    assert resolve_precision("auto", CPU, tmp_path / "with") == "bf16"
    assert resolve_precision("auto", CPU, tmp_path / "without") == "fp32"
    assert resolve_precision("auto", torch.device("cuda"), tmp_path / "with") == "fp16"
    assert resolve_precision("bf16", CPU, tmp_path / "without") == "bf16"  # asked for: slower, but as asked
    with pytest.raises(VtsearchError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


@pytest.fixture(scope="module")
def bf16_encoder(tiny_spec):
    return Encoder.load(tiny_spec, CPU, precision="bf16")


@pytest.fixture(scope="module")
def fp32_encoder(tiny_spec):
    return Encoder.load(tiny_spec, CPU, precision="fp32")


def test_bf16_agrees_with_fp32(bf16_encoder, fp32_encoder):
    assert bf16_encoder.precision == "bf16" and bf16_encoder.spec.precision == "bf16"
    assert next(bf16_encoder.model.parameters()).dtype == torch.bfloat16
    assert bf16_encoder.bf16_agreement >= BF16_AGREEMENT
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cosines = np.sum(bf16_encoder.encode_images(pixels) * fp32_encoder.encode_images(pixels), axis=1)
    assert cosines.min() >= BF16_AGREEMENT
    features = bf16_encoder.encode_image_features(pixels, bf16_encoder.region_layout())
    assert features.regions.dtype == torch.float32 and features.regions.shape == (4, 16, 64)
    tokens = bf16_encoder.encode_text_features(["a red square"]).tokens[0]
    assert tokens.dtype == torch.float32 and tokens.shape[1] == bf16_encoder.text_token_dim


def test_the_manifest_records_the_precision_and_the_probe_holds_across(tmp_path, bf16_encoder, fp32_encoder):
    """An index built in bf16 says so; a float32 encoder still passes its probe check (and
    would be refused if it embedded differently)."""
    make_images(tmp_path / "photos", 4)
    with Index.create(tmp_path / "index", encoder=bf16_encoder) as index:
        index.add([tmp_path / "photos"], IngestOptions(workers=0))
        probe = index.manifest.encoder_probe
    recorded = json.loads((tmp_path / "index" / "manifest.json").read_text())["encoder"]
    assert recorded["precision"] == "bf16"
    check_weights(fp32_encoder, fp32_encoder.embed_dim, probe, tmp_path / "index")
    with Index.open(tmp_path / "index", encoder=fp32_encoder) as index:  # the precision is not the model's identity
        assert len(index.search("a red square", k=2)) == 2


def test_bf16_that_disagrees_is_refused_or_falls_back(tiny_spec, monkeypatch, caplog):
    monkeypatch.setattr("vtsearch.encoder.encoder.BF16_AGREEMENT", 1.01)  # no cast can reach it
    with pytest.raises(ModelMismatchError, match="in bfloat16 at cosine .* to float32"):
        Encoder.load(tiny_spec, CPU, precision="bf16")
    monkeypatch.setattr("vtsearch.encoder.encoder.resolve_precision",
                        lambda choice, device: {"auto": "bf16"}.get(choice, choice))
    encoder = Encoder.load(tiny_spec, CPU, precision="auto")
    assert encoder.precision == "fp32" and next(encoder.model.parameters()).dtype == torch.float32
    assert "running it in float32" in caplog.text


def test_index_command_takes_a_precision(tmp_path, tiny_model_dir):
    make_images(tmp_path / "photos", 3)
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(tmp_path / "photos"), "--index", str(tmp_path / "index"),
                                  "--model", f"local-dir:{tiny_model_dir}", "--workers", "0", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "index" / "manifest.json").read_text())["encoder"]
    assert recorded["precision"] == "fp32"
    result = runner.invoke(main, ["index", str(tmp_path / "photos"), "--precision", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output


def test_a_model_that_needs_transformers_says_so(tmp_path, monkeypatch):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"never read")
    monkeypatch.setattr("vtsearch.encoder.weights._installed", lambda package: package != "transformers")
    with pytest.raises(MissingExtraError, match="needs the transformers package") as caught:
        Encoder.load(EncoderSpec.parse(f"local-dir:{tmp_path}"), CPU)
    assert (caught.value.package, caught.value.extra) == ("transformers", "multilingual")
    assert "pip install -e '.[multilingual]'" in one_line(caught.value)


def test_a_bf16_index_reranks_in_bf16_with_the_float32_order():
    """Where the encoder computes in bfloat16 the fusion scorer's matrix products do too;
    its log-softmax stays float32, so the scores move by far less than they differ."""
    from vtsearch.fusion import FusionConfig
    from vtsearch.query.rerank import Reranker

    config = FusionConfig(text_dim=48, region_dim=40, grid=3, width=32, heads=4, score="caption",
                          vocab=tuple(range(10, 60)), word_dim=16)
    generator = torch.Generator().manual_seed(0)
    states, ids = torch.randn(6, 48, generator=generator), torch.randint(10, 70, (6,), generator=generator)
    regions = torch.randn(20, 9, 40, generator=generator)
    stage1 = np.zeros(20, dtype=np.float32)
    outputs = {}
    for precision in ("fp32", "bf16"):
        reranker = Reranker.untrained(config, seed=1, precision=precision)
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(1.0)
        outputs[precision] = reranker.rerank(states, ids, stage1, regions, need_weights=True)
    fp32, bf16 = outputs["fp32"], outputs["bf16"]
    assert bf16.match_logit.dtype == np.float32 and bf16.attention[0].dtype == torch.float32
    spread = np.ptp(fp32.match_logit)
    assert spread > 0 and np.abs(bf16.match_logit - fp32.match_logit).max() < 0.1 * spread
    assert np.corrcoef(fp32.match_logit, bf16.match_logit)[0, 1] > 0.99
