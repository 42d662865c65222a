"""Shared fixtures: a tiny open_clip model in local-dir format and generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny CLIP in open_clip's local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": {}})
    )
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir):
    from vtsearch import EncoderSpec

    return EncoderSpec.parse(f"local-dir:{tiny_model_dir}")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_spec):
    from vtsearch.encode import Encoder

    return Encoder.load(tiny_spec, torch.device("cpu"))


class CountingEncoder:
    """Wraps a real encoder and counts the images it encodes."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.images_encoded = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_image_features(self, pixels, region_grid):
        self.images_encoded += len(pixels)
        return self._encoder.encode_image_features(pixels, region_grid)


def make_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (72, 56)) -> list[Path]:
    """Distinct little pictures: random colour blocks on random backgrounds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        for _ in range(3):
            x, y = rng.integers(0, size[0] - 16), rng.integers(0, size[1] - 16)
            pixels[y:y + 16, x:x + 16] = rng.integers(0, 256, 3)
        path = folder / f"image_{number:04d}.{('jpg', 'png', 'webp')[number % 3]}"
        Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder of images plus the odd files a real folder holds."""
    folder = tmp_path / "photos"
    make_images(folder, 24)
    make_images(folder / "nested" / "deeper", 6, seed=1)
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.jpg").write_text("a text file with an image name")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "image_0000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return folder
