"""clip-retrieval's back-end routes: their requests and answers (Starlette's test client),
and clip-retrieval's own ``ClipClient`` against a live vtsearch server.

clip-retrieval's package ``__init__`` imports its server's heavy dependencies, so it is
installed with ``--no-deps`` (by .ci/run) and its client module is loaded by file path;
the client needs only ``requests``.
"""

import base64
import importlib.metadata
import importlib.util
import io
import json

import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import SERVED_TEXTS, live_server, need, photo
from vtsearch import Index
from vtsearch.server import Library, ServerSettings, create_app


@pytest.fixture(scope="module")
def client(served_dir):
    library = Library.open([served_dir, served_dir], device="cpu")  # the second is served as "index-2"
    with TestClient(create_app(library), base_url="http://localhost") as c:
        yield c




# ---- the routes

def test_clip_retrieval_routes(client, served_dir, index):
    assert client.get("/indices-list").json() == ["index", "index-2"]
    assert client.get("/config.json").json() == {"defaultBackend": "http://localhost", "defaultIndex": "index",
                                                 "urlColumn": "url"}
    body = {"text": "a red square", "image": None, "image_url": None, "embedding_input": None,
            "deduplicate": False, "use_safety_model": True, "use_violence_detector": True, "indice_name": "index",
            "use_mclip": False, "aesthetic_score": "", "aesthetic_weight": "0.5", "modality": "image",
            "num_images": "3", "num_result_ids": 6}
    results = client.post("/knn-service", content=json.dumps(body)).json()  # no Content-Type, like ClipClient
    assert len(results) == 6 and all(set(item) >= {"id", "similarity"} for item in results)
    assert [item["id"] for item in results] == [r.id for r in index.query("a red square", k=6, recall_k=100).results]
    assert all({"url", "image_path", "caption", "image"} <= set(item) for item in results[:3])
    assert all(set(item) == {"id", "similarity"} for item in results[3:])
    Image.open(io.BytesIO(base64.b64decode(results[0]["image"]))).verify()

    by_url = client.post("/knn-service", content=json.dumps(
        {**body, "text": None, "image_url": results[0]["url"], "num_images": 1})).json()
    assert by_url[0]["id"] == results[0]["id"]
    vector = index.vectors([results[1]["id"]])[0].tolist()
    by_vector = client.post("/knn-service", content=json.dumps({**body, "text": None, "embedding_input": vector})).json()
    assert by_vector[0]["id"] == results[1]["id"]
    texts = client.post("/knn-service", content=json.dumps(
        {**body, "text": None, "image": base64.b64encode(photo(served_dir).read_bytes()).decode(),
         "modality": "text", "num_images": 2, "num_result_ids": 2})).json()
    assert len(texts) == 2 and all(item["caption"] == item["text"] for item in texts)

    metadata = client.post("/metadata", content=json.dumps({"indice_name": "index", "ids": [3, 9999, 1]})).json()
    assert [item["id"] for item in metadata] == [3, 9999, 1] and metadata[1]["metadata"] == {}
    assert metadata[0]["metadata"]["image_path"].endswith("image_0002.webp")
    assert client.post("/metadata", content=json.dumps({"indice_name": "index", "ids": []})).json() == []


@pytest.mark.parametrize("change, status, message", [
    ({"text": None}, 400, "give a query"),
    ({"text": None, "image_url": "https://elsewhere.example/cat.jpg"}, 400, "does not fetch images"),
    ({"text": None, "embedding_input": [0.1, 0.2]}, 400, "this index's vectors have 64"),
    ({"modality": "audio"}, 400, "modality must be"),
    ({"modality": "text"}, 400, "for a text query use modality"),
    ({"num_images": "lots"}, 400, "num_images must be an integer"),
    ({"indice_name": "laion5B"}, 404, "no index named 'laion5B'"),
])
def test_clip_retrieval_bad_requests(client, change, status, message):
    body = {"text": "a cat", "modality": "image", "num_images": 2, "indice_name": "index", **change}
    response = client.post("/knn-service", content=json.dumps(body))
    assert response.status_code == status and message in response.json()["error"]


def test_clip_retrieval_routes_allow_cross_origin_calls_from_named_origins_only(served_dir):
    """Opted in with --cors-origin: that front end may call the routes; other origins may not
    (the default, none at all: tests/test_hardening_server.py)."""
    settings = ServerSettings(cors_origins=("http://front.example",))
    with TestClient(create_app(Library.open([served_dir], device="cpu"), settings), base_url="http://localhost") as c:
        def preflight(origin):
            return c.options("/knn-service", headers={"origin": origin, "access-control-request-method": "POST"})

        assert preflight("http://front.example").headers["access-control-allow-origin"] == "http://front.example"
        assert "access-control-allow-origin" not in preflight("http://attacker.example").headers
        listed = c.get("/indices-list", headers={"origin": "http://front.example"})
        assert listed.headers["access-control-allow-origin"] == "http://front.example"
        api = c.post("/api/search", json={"text": "x"}, headers={"origin": "http://front.example"})
        assert "access-control-allow-origin" not in api.headers  # /api stays same-origin


# ---- clip-retrieval's own client

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
        photo = index.image_row(4).path
        vector = index.vectors([7])[0].tolist()
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
        vectors = index.vectors(kept)
    assert all(float(vectors[i] @ vectors[j]) < 0.94 for i in range(len(kept)) for j in range(i))

    texts = clip_client.ClipClient(url=f"{server}/knn-service", indice_name="index", num_images=3,
                                   modality=clip_client.Modality.TEXT)
    described = texts.query(image=photo)
    assert len(described) == 3 and {item["caption"] for item in described} <= set(SERVED_TEXTS)
