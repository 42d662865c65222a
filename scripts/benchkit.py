"""What the benchmark scripts share: an open_clip model with random weights, and photos.

Random weights cost exactly what pretrained ones do, and need no download.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from vtsearch.config import EncoderSpec
from vtsearch.encoder import Encoder


def random_encoder(model: str, device: torch.device, precision: str = "auto") -> Encoder:
    """``model`` (an open_clip name) with seeded random weights, as a vtsearch encoder."""
    torch.manual_seed(0)
    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    return Encoder(EncoderSpec(model, "random-init"), network, preprocess, open_clip.get_tokenizer(model), device,
                   precision)


def write_random_model(folder: Path, model: str) -> None:
    """``model`` with seeded random weights, saved in open_clip's ``local-dir`` layout."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    network = open_clip.create_model(model, pretrained=None)
    config = {"model_cfg": open_clip.get_model_config(model), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in network.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))


def write_random_photos(folder: Path, count: int, size: tuple[int, int] = (128, 96)) -> None:
    """``count`` seeded random-noise JPEGs of ``size`` in a new ``folder``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{number:05d}.jpg")


def start_server(index_dir: Path, port: int) -> subprocess.Popen:
    """A real ``vtsearch serve`` of ``index_dir`` on 127.0.0.1:``port`` (on the CPU), once it answers."""
    import requests

    vtsearch = Path(sys.executable).with_name("vtsearch")
    command = [str(vtsearch)] if vtsearch.exists() else [sys.executable, "-m", "vtsearch.cli"]
    server = subprocess.Popen([*command, "serve", "--index", str(index_dir), "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return server
        except requests.RequestException:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start in 120 s")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
