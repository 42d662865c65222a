"""Shared fixtures: a tiny open_clip model in local-dir format and generated images."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

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
    from vtsearch.encoder import Encoder

    return Encoder.load(tiny_spec, torch.device("cpu"))


class CountingEncoder:
    """Wraps a real encoder and counts the images it encodes."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.images_encoded = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_image_features(self, pixels, layout):
        self.images_encoded += len(pixels)
        return self._encoder.encode_image_features(pixels, layout)


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


SERVED_TEXTS = ["a red square", "a blue circle", "a green triangle", "a dog on a beach", "a bowl of fruit"]


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory, tiny_encoder) -> Path:
    """An index of 24 images with a text collection and a scorer whose weight is not 0,
    so served text queries are really reranked."""
    from vtsearch import Index, IngestOptions
    from vtsearch.fusion import FusionConfig
    from vtsearch.query.rerank import Reranker

    root = tmp_path_factory.mktemp("served")
    make_images(root / "photos", 24)
    with Index.create(root / "index", encoder=tiny_encoder) as index:
        index.add([root / "photos"], IngestOptions(workers=0))
        index.add_texts(SERVED_TEXTS)
        layout = index.manifest.regions
        reranker = Reranker.untrained(FusionConfig(text_dim=tiny_encoder.text_token_dim, region_dim=layout.dim,
                                                   grid=layout.grid, prefix=layout.prefix,
                                                   max_tokens=tiny_encoder.context_length),
                                      seed=3)
        with torch.no_grad():
            reranker.scorer.rerank_weight.fill_(0.5)
        reranker.trained = {"note": "a random scorer with weight 0.5, for tests"}
        index.save_reranker(reranker)
    return root / "index"


@pytest.fixture(scope="module")
def index(served_dir):
    """The served index, opened as a reader (for the server and client tests)."""
    from vtsearch import Index

    with Index.open(served_dir, device="cpu") as opened:
        yield opened


def photo(served_dir, number=5):
    """One of the served index's photos."""
    return served_dir.parent / "photos" / f"image_{number:04d}.{('jpg', 'png', 'webp')[number % 3]}"


@contextlib.contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


REQUIRE_LIVE_ENV = "VTSEARCH_REQUIRE_LIVE_TESTS"  # set by .ci/run: a missing browser or client fails


def need(available: bool, what: str) -> None:
    """Skip a test whose outside tool is missing here, or fail it where CI promised it."""
    if available:
        return
    if os.environ.get(REQUIRE_LIVE_ENV):
        pytest.fail(f"{what} is missing, and {REQUIRE_LIVE_ENV} says it must be here")
    pytest.skip(f"{what} is not installed (.ci/run installs it)")


POSTGRES_ENV = "VTSEARCH_TEST_POSTGRES_URL"  # a server where the tests may create databases


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test. Its collation
    is ICU's en-US, not bytes: the catalog must not rely on the server's default."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = os.environ.get(POSTGRES_ENV)
    need(bool(server), f"a PostgreSQL server ({POSTGRES_ENV})")
    name = f"vtsearch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0 '
                                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_location(request, tmp_path) -> str:
    """Where a test's catalog lives: a SQLite file, or a database on a PostgreSQL server.
    Catalog tests take this fixture and run on both backends."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.sqlite")
    return request.getfixturevalue("postgres_url")


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> object:
    """``scripts/NAME.py`` as a module (scripts import each other from their folder)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
