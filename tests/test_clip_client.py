"""clip-retrieval's own ``ClipClient`` against a live vtsearch server.

clip-retrieval's package ``__init__`` imports its server's heavy dependencies, so it is
installed with ``--no-deps`` (by .ci/run) and its client module is loaded by file path;
the client needs only ``requests``.
"""

import importlib.metadata
import importlib.util

import pytest

from conftest import SERVED_TEXTS, live_server, need
from vtsearch import Index
from vtsearch.server import Library, create_app


def load_clip_client():
    try:
        source = importlib.metadata.distribution("clip-retrieval").locate_file("clip_retrieval/clip_client.py")
    except importlib.metadata.PackageNotFoundError:
        source = None
    need(source is not None and source.is_file(), "clip-retrieval (pip install --no-deps clip-retrieval)")
    spec = importlib.util.spec_from_file_location("clip_retrieval_client", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(served_dir):
    with live_server(create_app(Library.open([served_dir], device="cpu"))) as base:
        yield base


def test_clip_client_searches_by_text_image_and_embedding(server, served_dir):
    clip_client = load_clip_client()
    client = clip_client.ClipClient(url=f"{server}/knn-service", indice_name="index", num_images=5,
                                    aesthetic_score=9, aesthetic_weight=0.5, deduplicate=False)
    with Index.open(served_dir, device="cpu") as index:
        expected = index.query("a red square", k=5, recall_k=100)
        photo = index.catalog.rows([4])[4].path
        vector = index.catalog.vectors([7], index.manifest.embed_dim)[0].tolist()
    by_text = client.query(text="a red square")
    assert expected.reranked and [item["id"] for item in by_text] == [r.id for r in expected.results]
    assert all(item["url"].startswith(server) and item["image"] for item in by_text)
    by_image = client.query(image=photo)
    assert by_image[0]["id"] == 4 and by_image[0]["image_path"] == photo
    assert client.query(embedding_input=vector)[0]["id"] == 7
    assert client.query(image=by_text[0]["url"])[0]["id"] == by_text[0]["id"]  # an image of this server

    # the client's default: near-duplicates (this tiny random model finds many) are dropped
    deduplicated = clip_client.ClipClient(url=f"{server}/knn-service", indice_name="index", num_images=5)
    kept = [item["id"] for item in deduplicated.query(text="a red square")]
    assert kept and kept[0] == by_text[0]["id"] and len(kept) <= 5
    with Index.open(served_dir, device="cpu") as index:
        vectors = index.catalog.vectors(kept, index.manifest.embed_dim)
    assert all(float(vectors[i] @ vectors[j]) < 0.94 for i in range(len(kept)) for j in range(i))

    texts = clip_client.ClipClient(url=f"{server}/knn-service", indice_name="index", num_images=3,
                                   modality=clip_client.Modality.TEXT)
    described = texts.query(image=photo)
    assert len(described) == 3 and {item["caption"] for item in described} <= set(SERVED_TEXTS)
