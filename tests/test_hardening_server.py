"""Issue 16, the server's part: what a hostile web page, a hostile local user and crafted
requests could make the server do, each tried through the real app (slow clients, the
fuzz and a long deduplication: tests/test_hardening_load.py)."""

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from conftest import make_images
from vtsearch import Index, IngestOptions, QueryError, SearchFilter
from vtsearch.cli import main
from vtsearch.records import ImageRow
from vtsearch.server import Library, allowed_hosts, create_app
from vtsearch.server.hosts import TrustedHosts
from vtsearch.server.thumbnails import ThumbnailCache

LOCAL = "http://localhost"
INTERNAL = "internal error (the server log has the details)"


@pytest.fixture(scope="module")
def client(served_dir):
    with TestClient(create_app(Library.open([served_dir], device="cpu")), base_url=LOCAL,
                    raise_server_exceptions=False) as c:
        yield c


# ---- 3: no cross-origin reading unless asked for

def test_other_origins_cannot_read_the_clip_routes_by_default(client):
    page = {"origin": "http://attacker.example"}
    preflight = client.options("/knn-service", headers={**page, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.post("/metadata", content=json.dumps({"ids": [1, 2]}), headers=page)  # no preflight needed
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in client.get("/indices-list", headers=page).headers


def test_serve_command_opens_nothing_up_unless_asked(served_dir, monkeypatch):
    import vtsearch.server

    started = []
    monkeypatch.setattr(vtsearch.server, "serve", lambda *args, **kwargs: started.append(kwargs["settings"]))
    assert CliRunner().invoke(main, ["serve", "--index", str(served_dir)]).exit_code == 0
    assert started[0].cors_origins == () and set(started[0].allowed_hosts) == {"localhost", "127.0.0.1", "::1"}
    result = CliRunner().invoke(main, ["serve", "--index", str(served_dir), "--host", "0.0.0.0", "--allowed-host",
                                       "photos.lan", "--cors-origin", "https://front.example", "--cors-origin", "*"])
    assert result.exit_code == 0, result.output
    assert started[1].cors_origins == ("https://front.example", "*") and "photos.lan" in started[1].allowed_hosts
    assert "any web page" in result.stderr  # '*' is said aloud


# ---- 4: DNS rebinding; the Host header is checked before it is reflected

@pytest.mark.parametrize("host, answered", [
    ("attacker.example", False), ("attacker.example:1234", False), ("127.0.0.1.attacker.example", False),
    ("localhost@attacker.example", False), ("localhost/x", False), ("", False),
    ("localhost:1234", True), ("LOCALHOST", True), ("127.0.0.1:8080", True), ("[::1]:1234", True),
])
def test_only_the_hosts_the_server_was_started_for_are_answered(client, host, answered):
    for route in ("/config.json", "/healthz", "/"):
        response = client.get(route, headers={"host": host})
        assert (response.status_code == 200) == answered, (route, host, response.text)
    refused = client.post("/knn-service", content=json.dumps({"text": "x"}), headers={"host": "attacker.example"})
    assert refused.status_code == 400 and "attacker" not in refused.text
    if answered:
        backend = client.get("/config.json", headers={"host": host}).json()["defaultBackend"]
        assert backend == f"http://{host}"


def test_allowed_hosts_follow_the_bind_address():
    loopback = TrustedHosts(None, allowed_hosts("127.0.0.1"))
    assert not loopback.allows("192.168.1.4:1234") and not loopback.allows("photos.lan")
    everywhere = TrustedHosts(None, allowed_hosts("0.0.0.0", ["photos.lan"]))
    assert everywhere.allows("192.168.1.4:1234") and everywhere.allows("[fe80::1]") and everywhere.allows("photos.lan")
    assert not everywhere.allows("attacker.example")  # a rebinding page has a name, not an address
    assert TrustedHosts(None, allowed_hosts("photos.lan")).allows("photos.lan:80")
    assert TrustedHosts(None, allowed_hosts("127.0.0.1", ["Photos.LAN:8080", "[fe80::2]"])).allows("photos.lan")
    assert TrustedHosts(None, allowed_hosts("127.0.0.1", ["[fe80::2]"])).allows("[fe80::2]:1234")
    assert TrustedHosts(None, allowed_hosts("127.0.0.1", ["*"])).allows("anything.example")


# ---- 5: originals (and thumbnails) only while the file is the one indexed

@pytest.fixture
def hostile_index(tmp_path, tiny_encoder):
    """An index of one photo, one symlinked photo, a symlink to a secret named .png and
    HTML named .jpg (both skipped); and its test client."""
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    make_images(outside, 1)
    make_images(photos, 1)
    secret = outside / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (photos / "link.png").symlink_to(outside / "image_0000.jpg")
    (photos / "secret.png").symlink_to(secret)
    (photos / "page.jpg").write_text("<html><script>alert(1)</script></html>")
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([photos], IngestOptions(workers=0))
        rows = [index.image_row(i) for i in range(1, 10)]
    rows = {Path(row.path).name: row for row in rows if row is not None}
    assert {name: row.status for name, row in rows.items()} == {
        "image_0000.jpg": "indexed", "link.png": "indexed", "secret.png": "error", "page.jpg": "error"}
    with TestClient(create_app(Library.open([tmp_path / "index"], device="cpu")), base_url=LOCAL) as c:
        yield c, rows, photos, secret


def test_skipped_files_are_not_served_by_id(hostile_index):
    client, rows, _, _ = hostile_index
    for name in ("secret.png", "page.jpg"):
        image_id = rows[name].id
        for route in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumbnail"):
            response = client.get(route)
            assert response.status_code == 404 and "skipped" in response.json()["error"]
            assert "root:" not in response.text and "<script>" not in response.text
        assert client.post("/api/explain", json={"image_id": image_id, "text": "x"}).status_code == 404
        assert client.post("/api/search", json={"image_id": image_id}).status_code == 404
        assert client.post("/metadata", content=json.dumps({"ids": [image_id]})).json() == [
            {"id": image_id, "metadata": {}}]


def test_a_retargeted_symlink_is_not_served(hostile_index):
    client, rows, photos, secret = hostile_index
    link = rows["link.png"].id
    assert client.get(f"/api/images/{link}").status_code == 200
    (photos / "link.png").unlink()
    (photos / "link.png").symlink_to(secret)
    for route in (f"/api/images/{link}", f"/api/images/{link}/thumbnail"):
        response = client.get(route)
        assert response.status_code == 409 and "root:" not in response.text
        assert "no longer" in response.json()["error"] or "changed" in response.json()["error"]


def test_a_changed_vanished_or_replaced_file_is_not_served(hostile_index):
    client, rows, photos, _ = hostile_index
    photo, image_id = photos / "image_0000.jpg", rows["image_0000.jpg"].id
    original = client.get(f"/api/images/{image_id}")
    assert original.status_code == 200 and original.content == photo.read_bytes()
    assert original.headers["content-type"] == "image/jpeg" and "image_0000.jpg" in original.headers[
        "content-disposition"]
    photo.write_bytes(photo.read_bytes() + b"appended")
    assert client.get(f"/api/images/{image_id}").status_code == 409
    photo.unlink()
    gone = client.get(f"/api/images/{image_id}")
    assert gone.status_code == 404 and "gone" in gone.json()["error"]
    os.mkfifo(photo)  # opening it for reading would block a plain open() for ever
    assert client.get(f"/api/images/{image_id}").status_code == 409
    assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 409


# ---- 6: thumbnails in a folder only this user can write, cached files never followed

def test_thumbnails_never_go_where_others_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    index_dir = tmp_path / "index"
    (index_dir / "thumbnails").mkdir(parents=True)
    os.chmod(index_dir / "thumbnails", 0o777)  # as a hostile folder (or /tmp) would be
    folder = ThumbnailCache(index_dir).folder
    assert folder.is_relative_to(tmp_path / "cache" / "vtsearch" / "thumbnails")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
    assert ThumbnailCache(index_dir).folder == folder  # the same each time: a real cache
    os.chmod(folder, 0o755)  # no longer private: not used, and nothing predictable instead
    fallback = ThumbnailCache(index_dir).folder
    assert fallback != folder and stat.S_IMODE(fallback.stat().st_mode) == 0o700
    os.chmod(index_dir / "thumbnails", 0o755)
    assert ThumbnailCache(index_dir).folder == index_dir / "thumbnails"


def test_the_private_cache_is_used_under_a_group_writable_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    index_dir = tmp_path / "index"
    (index_dir / "thumbnails").mkdir(parents=True)
    os.chmod(index_dir / "thumbnails", 0o777)
    old = os.umask(0o002)  # Debian's and Ubuntu's default for users
    try:
        folders = {ThumbnailCache(index_dir).folder for _ in range(2)}
    finally:
        os.umask(old)
    [folder] = folders  # the same folder both times, not a new temporary one
    assert folder.is_relative_to(tmp_path / "cache" / "vtsearch" / "thumbnails")


def test_a_symlink_planted_in_the_thumbnail_folder_is_not_followed(tmp_path):
    photo = make_images(tmp_path / "photos", 1)[0]
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not yours")
    found = photo.stat()
    row = ImageRow(1, str(photo), 72, 56, "JPEG", "indexed", found.st_size, found.st_mtime_ns)
    (tmp_path / "index").mkdir()
    cache = ThumbnailCache(tmp_path / "index")
    planted = cache.folder / f"1_256_{found.st_size}_{found.st_mtime_ns}.jpg"
    planted.symlink_to(secret)
    jpeg = cache.read(row, 256)
    assert jpeg.startswith(b"\xff\xd8\xff") and b"not yours" not in jpeg
    assert not planted.is_symlink() and secret.read_bytes() == b"\xff\xd8 not yours"  # replaced, not written through
    assert cache.read(row, 256) == jpeg


# ---- 9 and 14: values no catalog or model can take are the client's mistake (400)

DEEP = "[" * 100_000 + "]" * 100_000
BAD_REQUESTS = [
    ("/api/search", '{"text": "x", "k": ' + DEEP + "}", "nested too deeply"),
    ("/api/search", '{"text": "x", "k": ' + "9" * 5000 + "}", "too many digits"),
    ("/api/search", json.dumps({"text": "x", "k": "9" * 5000}), "k must be an integer"),
    ("/api/search", json.dumps({"text": "x", "recall_k": 2**70}), "recall_k must be between"),
    ("/api/search", json.dumps({"text": "x", "filters": {"min_width": 2**70}}), "min_width"),
    ("/api/search", json.dumps({"text": "x", "filters": {"min_height": -1}}), "min_height"),
    ("/api/search", json.dumps({"text": "x", "filters": {"modified_after": 1e300}}), "modified_after"),
    ("/api/search", '{"text": "x", "filters": {"modified_before": NaN}}', "modified_before"),
    ("/api/search", json.dumps({"text": "x", "filters": {"modified_after": "9999-12-31"}}), "modified_after"),
    ("/api/search", json.dumps({"text": "x", "filters": {"glob": "*" * 60_000}}), "glob is 60,000"),
    ("/api/search", json.dumps({"text": "x", "filters": {"path_prefix": "/a\u0000b"}}), "NUL"),
    ("/api/search", json.dumps({"text": "x", "filters": '{"glob": ' + DEEP + "}"}), "nested too deeply"),
    ("/api/search", json.dumps({"image_id": 2**63}), "image_id must be between"),
    ("/api/explain", json.dumps({"image_id": 2**64, "text": "x"}), "image_id must be between"),
    ("/api/match", json.dumps({"image_id": 1, "labels": [""]}), "labels: item 1 is empty"),
    ("/api/match", json.dumps({"image_id": 1, "labels": ["a cat", "x" * 5000]}), "labels: item 2 is 5,000"),
    ("/metadata", json.dumps({"ids": [2**63]}), "ids are between"),
    ("/metadata", json.dumps({"ids": [-(2**63) - 1]}), "ids are between"),
    ("/knn-service", json.dumps({"image_url": "http://[broken/api/images/1"}), "not a URL"),
    ("/knn-service", json.dumps({"image_url": "/api/images/" + "9" * 30}), "does not fetch"),
    ("/knn-service", json.dumps({"image_url": "/api/images/" + "9" * 19}), "an image id is between"),
]


@pytest.mark.parametrize("route, body, message", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_values_no_catalog_can_take_get_400(client, route, body, message):
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert message in response.json()["error"] and len(response.text) < 500


@pytest.mark.parametrize("path", ["/api/images/9223372036854775808", "/api/images/18446744073709551616/thumbnail",
                                  "/api/images/" + "9" * 5000])
def test_image_ids_past_64_bits_get_400(client, path):
    response = client.get(path)
    assert response.status_code == 400 and "an image id is between" in response.json()["error"]


@pytest.mark.parametrize("vector", [[float("nan")] * 64, [float("inf")] * 64, [1e308] * 64, [-float("inf")] + [0] * 63,
                                    [0] * 64, [10**400] * 64], ids=["NaN", "Infinity", "1e308", "-Infinity", "zeros",
                                                                   "10^400"])
def test_embedding_input_must_be_finite_and_nonzero(client, vector):
    body = json.dumps({"indice_name": "index", "modality": "image", "embedding_input": vector})  # NaN, Infinity
    response = client.post("/knn-service", content=body)
    assert response.status_code == 400, response.text
    assert "embedding_input" in response.json()["error"]


def test_huge_but_finite_vectors_are_scaled_not_refused(client, index):
    vector = (index.vectors([7])[0] * 1e30).tolist()  # its squared length would overflow float32
    answer = client.post("/knn-service", content=json.dumps({"embedding_input": vector, "num_images": 1}))
    assert answer.status_code == 200 and answer.json()[0]["id"] == 7


def test_the_library_refuses_filters_no_catalog_can_hold():
    for conditions in ({"min_width": 2**70}, {"modified_after": 1e300}, {"modified_before": float("inf")},
                       {"glob": "x" * 60_000}, {"path_prefix": "a\0b"}, {"formats": [3]}, {"min_height": True},
                       {"modified_after": "0001-01-01"}, {"formats": ["png"] * 1000}):
        with pytest.raises(QueryError):
            SearchFilter.from_dict(conditions)
    assert SearchFilter.from_dict({"formats": None, "min_width": 2**31 - 1}).min_width == 2**31 - 1


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n{ } loop\nshowpage\n%%EOF\n"


def test_eps_uploads_never_reach_ghostscript(client, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    called = tmp_path / "gs-was-called"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {called}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # found again, on this PATH
    encoded = base64.b64encode(EPS).decode()
    answers = [client.post("/api/search", json={"image": encoded}),
               client.post("/api/match", files={"image": ("a.eps", EPS)}),
               client.post("/knn-service", content=json.dumps({"image": encoded, "modality": "text"}))]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert "-dBATCH" not in answer.text and "gs" not in answer.json()["error"].split()
    assert not called.exists()


def test_a_file_name_that_is_not_utf8_is_served(tmp_path, tiny_encoder):
    """Its path comes back as JSON's \\udcNN escapes (os.fsencode gives the bytes back), and
    the original is served under its own name: not a 500."""
    folder = tmp_path / "photos"
    [made] = make_images(folder, 1)
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    os.rename(made, latin1)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([folder], IngestOptions(workers=0))
    with TestClient(create_app(Library.open([tmp_path / "index"], device="cpu")), base_url=LOCAL) as client:
        found = client.post("/api/search", json={"text": "a photo", "k": 1})
        assert found.status_code == 200, found.text
        [result] = found.json()["results"]
        assert os.fsencode(result["path"]) == latin1
        original = client.get(result["url"])
        assert original.status_code == 200 and original.content == open(latin1, "rb").read()
        assert "caf%E9.jpg" in original.headers["content-disposition"]
