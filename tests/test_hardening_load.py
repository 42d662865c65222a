"""Issue 16, the server under load it did not ask for: clients that drip their requests,
a few hundred malformed requests at every route, and one long deduplication, each
against a real uvicorn (and the Starlette app) while ``/healthz`` must keep answering."""

import contextlib
import json
import random
import socket
import threading
import time

import pytest
import requests
import uvicorn
from starlette.testclient import TestClient

from conftest import make_images
from vtsearch import Index, IngestOptions
from vtsearch.server import UVICORN_OPTIONS, Library, ServerSettings, create_app
from vtsearch.server.protocol import HeadTimeoutH11Protocol

HEALTHY_S = 1.0  # /healthz answers within this, whatever else is going on


class QuickHeadTimeout(HeadTimeoutH11Protocol):
    head_timeout_s = 0.5


@contextlib.contextmanager
def uvicorn_server(app, **options):
    """``app`` under uvicorn with ``vtsearch serve``'s options, on a free loopback port in a
    thread; yields (host, port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", **{**UVICORN_OPTIONS, **options}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def healthz_seconds(address) -> float:
    started = time.monotonic()
    assert requests.get(f"http://127.0.0.1:{address[1]}/healthz", timeout=5).ok
    return time.monotonic() - started


def raw_exchange(address, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until the server closes it."""
    with socket.create_connection(address, timeout=wait_s) as conn:
        conn.sendall(data)
        answer = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                    break  # a keep-alive answer: its head is enough here
        return answer


@pytest.fixture(scope="module")
def live(served_dir):
    settings = ServerSettings(body_timeout_s=0.5)
    with uvicorn_server(create_app(Library.open([served_dir], device="cpu"), settings), http=QuickHeadTimeout) as at:
        yield at


def test_serve_runs_uvicorn_with_the_connection_limits(served_dir, monkeypatch):
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(options))
    from vtsearch.server import serve

    serve([str(served_dir)], host="127.0.0.1", port=0, device="cpu")
    assert started["http"].endswith(":HeadTimeoutH11Protocol") and started["timeout_keep_alive"] <= 5
    assert started["h11_max_incomplete_event_size"] and started["limit_concurrency"]


def test_clients_that_drip_or_say_nothing_are_cut_off(live):
    silent = [socket.create_connection(live) for _ in range(20)]
    dripping = [socket.create_connection(live) for _ in range(60)]
    for conn in dripping:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # a byte every 0.1 s: each keeps "sending"
        for conn in dripping:
            with contextlib.suppress(OSError):
                conn.sendall(b"a")
        time.sleep(0.1)
    assert healthz_seconds(live) < HEALTHY_S
    for conn in silent + dripping:
        conn.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(1024) == b""  # closed by the server
        conn.close()


def test_a_dripped_body_gets_408(live):
    head = b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    started = time.monotonic()
    answer = raw_exchange(live, head + b'{"text": ')
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3


def test_a_rebinding_host_gets_400_from_the_real_server(live):
    answer = raw_exchange(live, b"GET /config.json HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"attacker.example" not in answer


ODD_RAW_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n\r\n",  # two Hosts
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",  # past the head limit
    b"GET http://attacker.example/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",  # absolute form
    b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/images/1 HTTP/1.1\r\nHost: local\xffhost\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    b"Content-Length: 30\r\n\r\n--x\r\nContent-Disposition: form\r\n",
    b"BREW /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: localhost\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
    b"GET /static/..%2f..%2fapp.py HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/images/%F0%9F%98%80 HTTP/1.1\r\nHost: localhost\r\n\r\n",
]


def test_odd_raw_requests_get_no_5xx_and_leave_the_server_well(live):
    for data in ODD_RAW_REQUESTS:
        answer = raw_exchange(live, data)
        status = answer[9:12]
        assert answer == b"" or status[:1] in (b"2", b"4") or status == b"503", (data[:60], answer[:200])
    assert healthz_seconds(live) < HEALTHY_S


# ---- the fuzz: a few hundred malformed requests at every route

NASTY = [None, True, False, -1, 0, 1, 2**31, 2**63, -(2**63) - 1, 10**300, 1.5, -0.0, 1e308, float("nan"),
         float("inf"), "", " ", "\u0000", "x" * 70_000, "\u2603", "1e5", "0x10", "\u0663", "\u00b2",
         "-", "../../etc/passwd", "data:,", "aGVsbG8=", [], [None], [1, "a"], ["x"] * 2000, {}, {"a": [{}]},
         [[[[[]]]]], {"$gt": ""}]
FIELDS = ["text", "k", "recall_k", "rerank", "deduplicate", "index", "image", "image_id", "labels", "filters",
          "embedding_input", "num_images", "num_result_ids", "modality", "ids", "indice_name", "image_url"]
FILTERS = ["path_prefix", "glob", "formats", "min_width", "min_height", "modified_after", "modified_before"]
POSTS = ["/api/search", "/api/match", "/api/explain", "/knn-service", "/metadata"]
GETS = ["/", "/healthz", "/api/info", "/indices-list", "/config.json", "/static/app.js", "/api/images/{}",
        "/api/images/{}/thumbnail"]
RAW_BODIES = [b"", b"{", b"[1,2", b"\xff\xfe{\x00}", b"\xef\xbb\xbf{}", b"null", b"[]", b'"text"', b"NaN",
              b"{" * 50_000, b'{"k": ' + b"1" * 5000 + b"}", b'{"text": "x"' + b', "text": "y"' * 1000 + b"}",
              b"--x\r\n", b"a=1&b=%zz", b'{"text": "\\ud800"}']
CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "multipart/form-data",
                 "multipart/form-data; boundary=", "application/x-www-form-urlencoded", "text/plain", b"\xe9"]


def random_body(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return rng.choice(RAW_BODIES)
    fields = {name: rng.choice(NASTY) for name in rng.sample(FIELDS, rng.randint(1, 5))}
    if "filters" in fields and rng.random() < 0.7:
        fields["filters"] = {name: rng.choice(NASTY) for name in rng.sample(FILTERS, rng.randint(1, 3))}
    if rng.random() < 0.3:
        fields["text"] = "a red square"  # gets past "no query" to the deeper checks
    return json.dumps(fields, allow_nan=True).encode()


def random_request(rng: random.Random) -> dict:
    headers = {"content-type": rng.choice(CONTENT_TYPES)} if rng.random() < 0.5 else {}
    if rng.random() < 0.1:
        headers["host"] = rng.choice(["attacker.example", "localhost:0", "[::1]", "a" * 300, "localhost:99999"])
    if rng.random() < 0.4:
        part = rng.choice(["1", "0", "-1", "9" * 25, "1.5", "%00", "..%2f..", "\u0663", "1e3", " 1", "2"])
        query = rng.choice(["", "?index=nope", "?size=0", "?size=99999999999999999999", "?size=x", "?index=%00"])
        return {"method": "GET", "url": rng.choice(GETS).format(part) + query, "headers": headers}
    if rng.random() < 0.15:  # a form: text fields and an upload of odd bytes
        data = {name: str(rng.choice(NASTY))[:5000] for name in rng.sample(FIELDS, rng.randint(1, 4))}
        upload = rng.choice([b"", b"\x89PNG\r\n\x1a\n", b"%!PS-Adobe-3.0 EPSF-3.0\n", bytes(300), b"GIF89a" + bytes(20)])
        return {"method": "POST", "url": rng.choice(POSTS), "data": data, "files": {"image": ("x", upload)}}
    return {"method": "POST", "url": rng.choice(POSTS), "content": random_body(rng), "headers": headers}


def test_a_few_hundred_malformed_requests_get_only_2xx_4xx_or_503(served_dir):
    rng = random.Random(16)
    statuses: dict[int, int] = {}
    app = create_app(Library.open([served_dir], device="cpu"), ServerSettings(max_upload_bytes=200_000))
    started = time.monotonic()
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        for _ in range(400):
            request = random_request(rng)
            response = client.request(**request)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500 or response.status_code == 503, (request, response.text[:300])
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}
        health = time.monotonic()
        assert client.get("/healthz").status_code == 200 and time.monotonic() - health < HEALTHY_S
    assert sum(statuses.values()) == 400 and len(statuses) >= 3, statuses  # varied, not one refusal
    assert time.monotonic() - started < 20


# ---- item 1: a long deduplication runs behind the work gate, off the event loop

@pytest.fixture(scope="module")
def wide_index(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("wide")
    make_images(root / "photos", 300, size=(24, 24))
    with Index.create(root / "index", encoder=tiny_encoder) as index:
        index.add([root / "photos"], IngestOptions(workers=0))
    return root / "index"


def test_a_long_deduplication_does_not_stall_other_routes(wide_index, monkeypatch):
    """The deduplication of a k=10,000 search is held until /healthz has answered: were
    it run on the event loop, /healthz could not answer; were it outside the work gate, a
    second search would not be refused (concurrency 1, no queue)."""
    from vtsearch.query import search as search_module

    real, entered, release = search_module.drop_near_duplicates, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "drop_near_duplicates", held)
    settings = ServerSettings(concurrency=1, queue=0)
    with uvicorn_server(create_app(Library.open([wide_index], device="cpu"), settings)) as address:
        url = f"http://127.0.0.1:{address[1]}/api/search"
        answers = []
        search = threading.Thread(target=lambda: answers.append(requests.post(
            url, json={"text": "a red square", "k": 10_000, "deduplicate": True}, timeout=30)))
        search.start()
        try:
            assert entered.wait(10), "the search never reached its deduplication"
            assert healthz_seconds(address) < HEALTHY_S
            second = requests.post(url, json={"text": "x"}, timeout=5)
            assert second.status_code == 503  # the deduplicating search holds the one work slot
        finally:
            release.set()
            search.join(30)
    results = answers[0].json()["results"]
    assert answers[0].status_code == 200 and 0 < len(results) < 300
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
