"""The HTTP API (Starlette's test client): search, match, explain, images, and what
hostile or malformed requests get (clip-retrieval's routes: tests/test_clip_client.py)."""

import asyncio
import base64
import io
import struct
import zlib

import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from conftest import photo

LOCAL = "http://localhost"  # a Host the server answers to (Starlette's test client says "testserver")
from vtsearch import Index, IndexFormatError, IndexLockedError, QueryError, SearchFilter
from vtsearch.cli import main
from vtsearch.errors import NoTextCollectionError
from vtsearch.server import Library, ServerSettings, create_app, is_loopback
from vtsearch.server.limits import HTTPError, WorkGate


@pytest.fixture(scope="module")
def client(served_dir):
    library = Library.open([served_dir, served_dir], device="cpu")  # the second is served as "index-2"
    settings = ServerSettings(max_upload_bytes=200_000, max_upload_pixels=4_000_000)
    with TestClient(create_app(library, settings), base_url=LOCAL) as c:
        yield c




def png_header(width, height):
    """A PNG that claims width × height pixels (its pixel data is a stub)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---- search

def test_text_search_matches_the_library_and_links_images(client, index):
    answer = client.post("/api/search", json={"text": "a red square", "k": 5}).json()
    expected = index.query("a red square", k=5)
    assert answer["reranked"] is True and expected.reranked
    assert [r["id"] for r in answer["results"]] == [r.id for r in expected.results]
    first = answer["results"][0]
    assert set(first) >= {"rank", "id", "path", "score", "stage1_score", "stage1_rank", "width", "height",
                          "format", "thumbnail", "url"}
    assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail?index=index"
    assert set(answer["timings_ms"]) >= {"encode", "ann", "rerank"}


def test_rerank_switch_and_recall_k(client, index):
    plain = client.post("/api/search", json={"text": "a blue circle", "k": 8, "rerank": False}).json()
    assert plain["reranked"] is False
    assert [r["id"] for r in plain["results"]] == [r.id for r in index.query("a blue circle", k=8, rerank=False).results]
    assert all(r["rank"] == r["stage1_rank"] for r in plain["results"])
    reranked = client.post("/api/search", json={"text": "a blue circle", "k": 8, "recall_k": 24}).json()
    assert sorted(r["stage1_rank"] for r in reranked["results"]) != list(range(1, 9)) or reranked["reranked"]


def test_filters_restrict_results(client, served_dir):
    answer = client.post("/api/search", json={"text": "a red square", "k": 24,
                                              "filters": {"formats": ["png"], "min_width": 10}}).json()
    assert answer["results"] and all(r["format"] == "PNG" for r in answer["results"])
    assert len(answer["results"]) == 8
    form = client.post("/api/search", data={"text": "a red square", "k": "24", "filters": '{"glob": "*_000?.jpg"}'})
    assert form.status_code == 200 and {r["path"].rsplit("/", 1)[1] for r in form.json()["results"]} == {
        "image_0000.jpg", "image_0003.jpg", "image_0006.jpg", "image_0009.jpg"}


@pytest.mark.parametrize("how", ["upload", "base64", "image_id"])
def test_search_by_image(client, served_dir, index, how):
    path = photo(served_dir)
    if how == "upload":
        response = client.post("/api/search", data={"k": "3"}, files={"image": (path.name, path.read_bytes())})
    elif how == "base64":
        response = client.post("/api/search", json={"k": 3, "image": base64.b64encode(path.read_bytes()).decode()})
    else:
        image_id = index.image_ids([str(path)])[str(path)]
        response = client.post("/api/search", json={"k": 3, "image_id": image_id})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["path"] == str(path)


def test_second_index_by_name(client):
    answer = client.post("/api/search", json={"text": "a dog", "k": 2, "index": "index-2"}).json()
    assert answer["index"] == "index-2" and answer["results"][0]["url"].endswith("?index=index-2")
    assert client.get("/healthz").json() == {"status": "ok", "indexes": ["index", "index-2"]}
    info = client.get("/api/info", params={"index": "index"}).json()["indexes"]
    assert len(info) == 1 and info[0]["images"] == 24 and info[0]["texts"] == 5


# ---- match and explain

def test_match_by_upload_labels_and_collection(client, served_dir):
    path = photo(served_dir, 2)
    labels = client.post("/api/match", data={"labels": "a cat\na dog\na cat"},
                         files={"image": (path.name, path.read_bytes())})
    assert labels.status_code == 200 and {r["text"] for r in labels.json()["results"]} == {"a cat", "a dog"}
    assert all(r["id"] is None for r in labels.json()["results"])
    collection = client.post("/api/match", json={"image_id": 3, "k": 5}).json()
    assert collection["reranked"] is True and len(collection["results"]) == 5
    assert collection["image"].endswith("image_0002.webp")


def test_explain_gives_attention_per_token(client):
    answer = client.post("/api/explain", json={"image_id": 1, "text": "a red square"}).json()
    assert answer["tokens"][1:4] == ["a", "red", "square"] and answer["grid"] == 4
    assert len(answer["weights"]) == len(answer["tokens"]) == 5
    assert all(len(row) == 16 and abs(sum(row) - 1) < 2e-3 for row in answer["weights"])  # bf16 where the CPU has it
    assert answer["crop"] == pytest.approx([8 / 72, 0, 64 / 72, 1])  # 72 × 56: the centre square
    assert answer["reranks"] is True
    assert answer["score"] == pytest.approx(answer["stage1_score"] + 0.5 * answer["match_logit"], abs=1e-5)


# ---- images

def test_thumbnails_are_bounded_and_cached(client, served_dir):
    response = client.get("/api/images/1/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) <= 256
    cached = list((served_dir / "thumbnails").glob("1_256_*.jpg"))
    assert len(cached) == 1
    inode = cached[0].stat().st_ino
    assert client.get("/api/images/1/thumbnail").content == response.content
    assert cached[0].stat().st_ino == inode  # served from the cache, not made again
    large = client.get("/api/images/1/thumbnail", params={"size": 1024})
    assert Image.open(io.BytesIO(large.content)).size == (72, 56)  # never enlarged
    assert client.get("/api/images/1/thumbnail", params={"size": 300}).status_code == 400


def test_original_is_served_by_id(client, served_dir):
    response = client.get("/api/images/2")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == photo(served_dir, 1).read_bytes()
    assert client.get("/api/images/9999").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/images/../../../etc/passwd", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/images/-1",
    "/api/images/1%2F..%2F..%2Fcatalog.sqlite", "/static/../catalog.sqlite", "/static/%2e%2e/app.py",
    "/static/..%2f..%2f__init__.py", "/api/images/1?index=../../etc",
])
def test_path_traversal_gets_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "root:" not in response.text and "import" not in response.text


# ---- bad requests

@pytest.mark.parametrize("body, message", [
    ("{bad json", "malformed JSON"),
    ("", "the request body is empty"),
    ("[1, 2]", "must be a JSON object, not list"),
    ('{"text": 5}', "text must be a string"),
    ('{"text": "x", "k": "many"}', "k must be an integer"),
    ('{"text": "x", "k": true}', "k must be an integer"),
    ('{"text": "x", "k": 0}', "k must be between 1 and 10000"),
    ('{"text": "x", "rerank": "maybe"}', "rerank must be true or false"),
    ('{"text": "x", "filters": {"min_width": "wide"}}', "filters.min_width has the wrong type"),
    ('{"text": "x", "filters": {"colour": "red"}}', "unknown filter 'colour'"),
    ('{"text": "x", "filters": {"modified_after": "yesterday"}}', "cannot read 'yesterday' as a date"),
    ('{"text": "   "}', "the query text is empty"),
    ("{}", "give one query"),
    ('{"text": "x", "image_id": 1}', "give one query"),
    ('{"image": "not base64!"}', "image must be an image file's bytes in base64"),
    ('{"image": "aGVsbG8="}', "image is not an image"),
    ('{"text": "x", "index": 3}', "index must be a string"),
])
def test_malformed_search_requests_get_400(client, body, message):
    response = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_bad_match_and_explain_requests(client):
    assert client.post("/api/match", json={"labels": ["x"]}).status_code == 400
    assert "labels must be a list of strings" in client.post("/api/match", json={"image_id": 1, "labels": "x"}).text
    assert client.post("/api/match", json={"image_id": 9999}).status_code == 404
    assert client.post("/api/explain", json={"text": "x"}).status_code == 400
    assert client.post("/api/explain", json={"image_id": 9999, "text": "x"}).status_code == 404
    assert client.post("/api/search", json={"text": "x", "index": "nope"}).status_code == 404
    wrong_method = client.get("/api/search")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "method not allowed"}


def test_upload_limits(client):
    big = b"\xff" * 300_000
    too_big = client.post("/api/search", files={"image": ("big.jpg", big)})
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it streams
        for _ in range(20):
            yield b"x" * 50_000

    streamed = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    wide = client.post("/api/search", files={"image": ("wide.png", png_header(5000, 1000))})
    assert wide.status_code == 413 and "5000x1000 = 5,000,000 pixels" in wide.json()["error"]
    bomb = client.post("/api/search", json={"image": base64.b64encode(png_header(100_000, 100_000)).decode()})
    assert bomb.status_code == 413
    text = client.post("/api/match", files={"image": ("notes.jpg", b"plain text, not an image")})
    assert text.status_code == 400 and "not an image" in text.json()["error"]
    broken = client.post("/api/search", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400


def test_internal_errors_never_show_a_trace(client, monkeypatch):
    def explode(*_args, **_kwargs):
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(Index, "query", explode)
    quiet = TestClient(client.app, raise_server_exceptions=False, base_url=LOCAL)  # as a real server would
    response = quiet.post("/api/search", json={"text": "x"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (the server log has the details)"}


@pytest.mark.parametrize("error, status, message", [
    (QueryError("k must be at most 10000"), 400, "k must be at most 10000"),
    (NoTextCollectionError("add one with vtsearch texts add"), 400, "no text collection to match against"),
    (IndexLockedError("/somewhere", 42), 503, "locked by pid 42"),
    (IndexFormatError("the catalog at /home/me is damaged"), 500, "internal error (the server log has the details)"),
])
def test_library_errors_map_to_statuses_by_type(client, monkeypatch, error, status, message):
    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(Index, "match", fail)
    response = client.post("/api/match", json={"image_id": 1})
    assert response.status_code == status and message in response.json()["error"]
    assert "vtsearch texts" not in response.json()["error"]  # no command-line advice over HTTP
    assert "/home/me" not in response.text  # a 500 says only "internal error"
    assert (response.headers.get("retry-after") == "1") == (status == 503)


def test_the_gate_refuses_past_its_queue():
    async def scenario():
        gate = WorkGate(concurrency=1, queue=1, wait_s=5)
        release = asyncio.Event()

        async def hold():
            async with gate.slot():
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(HTTPError) as refused:
            async with gate.slot():
                pass
        release.set()
        await asyncio.gather(holder, waiter)
        timed = WorkGate(concurrency=1, queue=5, wait_s=0.05)
        async with timed.slot():
            with pytest.raises(HTTPError, match="waited 0.05 s"):
                async with timed.slot():
                    pass
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}


# ---- the page and headers

def test_page_and_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\"" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # nothing from elsewhere
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert "access-control-allow-origin" not in client.post(
        "/api/search", json={"text": "x"}, headers={"origin": "http://elsewhere.example"}).headers


# ---- the command

def test_serve_command_checks_its_index_first(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--index", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no index at" in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert SearchFilter.from_dict({}).active is False


def test_the_serve_command_in_its_own_processes(served_dir):
    """The real command: two worker processes on all interfaces (with the warning),
    answering until it is stopped."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-c", "from vtsearch.cli import main; main()", "serve", "--index", str(served_dir),
               "--host", "0.0.0.0", "--port", str(port), "--workers", "2", "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        answer = requests.post(f"http://127.0.0.1:{port}/api/search", json={"text": "a red square", "k": 3}).json()
        assert len(answer["results"]) == 3 and answer["reranked"] is True
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in errors
    assert "Traceback" not in errors


def indexed_row(image_id, path):
    """A catalog row for ``path`` as the index would have read it now."""
    from vtsearch.records import ImageRow

    found = path.stat()
    return ImageRow(image_id, str(path), None, None, None, "indexed", found.st_size, found.st_mtime_ns)


def test_the_thumbnail_cache_follows_changes_and_keeps_to_its_cap(tmp_path):
    from conftest import make_images
    from vtsearch.server.thumbnails import ThumbnailCache

    paths = make_images(tmp_path / "photos", 12, size=(300, 200))
    for index_dir in ("probe", "index"):
        (tmp_path / index_dir).mkdir()
    probe = ThumbnailCache(tmp_path / "probe")
    one = len(probe.read(indexed_row(1, paths[0]), 256))
    probe.read(indexed_row(2, paths[1]), 256)
    old = next(probe.folder.glob("2_256_*.jpg"))
    Image.new("RGB", (640, 480), (200, 30, 30)).save(paths[1])  # the file changes, and is indexed again
    new = Image.open(io.BytesIO(probe.read(indexed_row(2, paths[1]), 256)))
    assert not old.exists() and new.size == (256, 192) and len(list(probe.folder.glob("2_256_*.jpg"))) == 1
    cache = ThumbnailCache(tmp_path / "index", max_bytes=int(5.5 * one))
    cache.read(indexed_row(1, paths[0]), 256)
    for number, path in enumerate(paths[1:], start=2):
        cache.read(indexed_row(number, path), 256)
        cache.read(indexed_row(1, paths[0]), 256)  # kept in use: never evicted
    files = list(cache.folder.glob("*.jpg"))
    assert any(f.name.startswith("1_256_") for f in files) and len(files) < 12
    assert sum(f.stat().st_size for f in files) <= cache.max_bytes
    assert cache._bytes == sum(f.stat().st_size for f in files)
    assert ThumbnailCache(tmp_path / "index", max_bytes=cache.max_bytes)._bytes == cache._bytes


def test_near_duplicates_are_dropped_on_request(client):
    import numpy as np

    from vtsearch.query.search import drop_near_duplicates
    from vtsearch.records import SearchResult

    class Vectors:
        rows = {1: [1.0, 0.0], 2: [0.96, 0.28], 3: [0.0, 1.0], 4: [0.6, 0.8]}  # 2 ≈ 1; 4 near neither

        def vectors(self, ids, dim):
            return np.array([self.rows[i] for i in ids], dtype=np.float32)

    results = [SearchResult(rank, i, f"/{i}.jpg", 1.0 - rank / 10, 0.0, rank) for rank, i in enumerate([1, 2, 3, 4], 1)]
    kept = drop_near_duplicates(results, Vectors(), 2)
    assert [(r.rank, r.id) for r in kept] == [(1, 1), (2, 3), (3, 4)]

    every = client.post("/api/search", json={"text": "a red square", "k": 24}).json()["results"]
    unique = client.post("/api/search", json={"text": "a red square", "k": 24, "deduplicate": True}).json()["results"]
    assert [r["rank"] for r in unique] == list(range(1, len(unique) + 1))
    assert [r["id"] for r in unique] == [r["id"] for r in every if r["id"] in {u["id"] for u in unique}]
    assert unique[0]["id"] == every[0]["id"] and len(unique) < len(every)


def test_a_running_server_sees_what_a_writer_adds(tmp_path, tiny_encoder):
    """The server keeps its indexes open; an index run in another process (here another
    Index on the same folder) shows up on the next query, thumbnails included."""
    from conftest import make_images
    from vtsearch import IngestOptions

    make_images(tmp_path / "photos", 4)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as writer:
        writer.add([tmp_path / "photos"], IngestOptions(workers=0))
    with TestClient(create_app(Library.open([tmp_path / "index"], device="cpu")), base_url=LOCAL) as live:
        assert len(live.post("/api/search", json={"text": "x", "k": 50}).json()["results"]) == 4
        make_images(tmp_path / "photos" / "more", 3, seed=5)
        with Index.open(tmp_path / "index", encoder=tiny_encoder) as writer:
            writer.add([tmp_path / "photos"], IngestOptions(workers=0))
        results = live.post("/api/search", json={"text": "x", "k": 50}).json()["results"]
        assert len(results) == 7
        newest = max(r["id"] for r in results)
        assert live.get(f"/api/images/{newest}/thumbnail").status_code == 200
