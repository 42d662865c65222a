"""Issue 16, decoding: only allow-listed raster formats reach Pillow (never Ghostscript),
every decode has a real deadline in any thread, broken files are not indexed over partial
pixels, codec noise stays off the terminal, and Pillow's globals are left alone."""

import base64
import io
import logging
import os
import signal
import stat
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hostile import broken_stream_png, corrupt_exif_jpeg, tiny_eps, truncated_end_chunk_png, webp_compressed_tiff
from PIL import Image, ImageFile

from vtsearch import Index, IngestOptions
from vtsearch.config import DecodeConfig
from vtsearch.decode import (
    RASTER_FORMATS, DecodeSandbox, decode_batches, decode_bytes, decode_file, decode_query_bytes, decode_query_image,
    peek_size, readable_formats,
)
from vtsearch.errors import ImageDecodeError
from vtsearch.records import DecodedImage, DecodeFailure, ScannedFile

REFUSED = "not a raster image format vtsearch reads"


def scanned(path) -> ScannedFile:
    info = os.stat(path)
    return ScannedFile(str(path), info.st_size, info.st_mtime_ns)


def as_array(image):
    return np.asarray(image)


def decode_all(files, config, transform=as_array, workers=2, batch_size=2):
    return [outcome for batch in decode_batches(files, config, transform, batch_size, workers) for outcome in batch]


@pytest.fixture
def fake_gs(tmp_path, monkeypatch):
    """A ``gs`` first on PATH that records being called; returns the record's path."""
    folder = tmp_path / "bin"
    folder.mkdir()
    record = tmp_path / "gs-was-called"
    script = folder / "gs"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> '{record}'\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return record


def test_scanned_postscript_never_reaches_ghostscript(tmp_path, fake_gs, tiny_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "drawing.eps").write_bytes(tiny_eps())
    (folder / "drawing named.jpg").write_bytes(tiny_eps())
    Image.new("RGB", (40, 30), "red").save(folder / "good.png")
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        summary = index.add([folder], IngestOptions(workers=1))
        reasons = {os.path.basename(record.path): record.reason for record in index.errors()}
    assert summary.indexed == 1
    assert reasons == {"drawing.eps": f"{REFUSED}: EPS", "drawing named.jpg": f"{REFUSED}: EPS"}
    assert not fake_gs.exists()


def test_uploaded_postscript_never_reaches_ghostscript(tmp_path, fake_gs):
    sandbox = DecodeSandbox(1)  # started now: its children see the fake gs on PATH
    try:
        with pytest.raises(ImageDecodeError, match=f"{REFUSED}: EPS"):
            decode_query_bytes(tiny_eps(), "(upload)", DecodeConfig(), as_array, sandbox)
        query = tmp_path / "query.png"
        query.write_bytes(tiny_eps())
        with pytest.raises(ImageDecodeError, match=f"{REFUSED}: EPS"):
            decode_query_image(str(query), DecodeConfig(), as_array, sandbox)
        with pytest.raises(ImageDecodeError, match=f"{REFUSED}: WMF"):  # a placeable metafile
            decode_bytes(b"\xd7\xcd\xc6\x9a\x00\x00" + bytes(40), "a thumbnail", DecodeConfig(), sandbox=sandbox)
        with pytest.raises(ImageDecodeError, match=f"{REFUSED}: PDF"):
            decode_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a thumbnail", DecodeConfig(), sandbox=sandbox)
        outcome = decode_file(scanned(query), DecodeConfig(), as_array, sandbox)  # a build with no workers
        assert isinstance(outcome, DecodeFailure) and outcome.reason == f"{REFUSED}: EPS"
    finally:
        sandbox.close()
    assert not fake_gs.exists()
    with pytest.raises(ImageDecodeError, match=f"{REFUSED}: EPS"):
        peek_size(tiny_eps())


def test_a_served_postscript_upload_never_reaches_ghostscript(served_dir, fake_gs):
    from starlette.testclient import TestClient

    from vtsearch.server import Library, create_app

    encoded = base64.b64encode(tiny_eps()).decode()
    with TestClient(create_app(Library.open([served_dir], device="cpu")), base_url="http://localhost") as client:
        search = client.post("/api/search", json={"image": encoded, "k": 3})
        knn = client.post("/knn-service", json={"image": encoded, "num_images": 3})
        health = client.get("/healthz")
    assert (search.status_code, knn.status_code, health.status_code) == (400, 400, 200)
    assert REFUSED in search.text and REFUSED in knn.text and "'gs'" not in search.text
    assert not fake_gs.exists()


def test_the_allow_list_holds_rasters_only():
    formats = set(readable_formats())
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM", "TGA"} <= formats
    assert not formats & {"EPS", "PDF", "WMF", "JPEG2000", "PSD", "MPEG", "FITS"}
    assert formats <= set(RASTER_FORMATS)


def slow_png() -> bytes:
    """A 9000 × 9000 grayscale PNG of zeros: 80 KB that take Pillow a second or more."""
    width = height = 9000
    header = np.array([width, height], dtype=">u4").tobytes() + bytes([8, 0, 0, 0, 0])

    def chunk(kind, data):
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    pixels = zlib.compress(bytes((width + 1) * height), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_a_slow_decode_is_cut_off_in_a_worker_thread():
    data = slow_png()
    sandbox = DecodeSandbox(1)
    try:
        with ThreadPoolExecutor(1) as pool:  # not the main thread: no signal-based timer works here
            started = time.perf_counter()
            future = pool.submit(decode_bytes, data, "the upload", DecodeConfig(timeout_s=0.05), None, sandbox)
            with pytest.raises(ImageDecodeError, match="too slow"):
                future.result(timeout=30)
            assert time.perf_counter() - started < 3
            small = io.BytesIO()
            Image.new("RGB", (6, 4), "blue").save(small, format="PNG")
            image = pool.submit(decode_bytes, small.getvalue(), "next", DecodeConfig(), None, sandbox).result()
        assert image.size == (6, 4)  # the killed child was replaced
    finally:
        sandbox.close()


def test_a_crash_costs_only_its_file(tmp_path):
    files = []
    for number in range(5):
        path = tmp_path / f"{number}.png"
        Image.new("RGB", (10 + number, 10)).save(path)
        files.append(scanned(path))

    def crash_on_the_third(image):
        if image.size == (12, 10):
            os.kill(os.getpid(), signal.SIGKILL)
        return np.asarray(image)

    outcomes = decode_all(files, DecodeConfig(), crash_on_the_third)
    assert [outcome.source.path for outcome in outcomes] == [file.path for file in files]
    assert outcomes[2].reason == "decode error: the decode process died on this file (killed by SIGKILL)"
    assert all(isinstance(outcomes[i], DecodedImage) for i in (0, 1, 3, 4))


@pytest.mark.parametrize("make, reason", [(broken_stream_png, "damaged: "), (truncated_end_chunk_png, "truncated: ")])
def test_broken_pngs_are_skipped_not_indexed_over_partial_pixels(tmp_path, make, reason):
    path = tmp_path / "broken.png"
    path.write_bytes(make())
    for workers in (0, 1):
        outcome = decode_all([scanned(path)], DecodeConfig(), workers=workers)[0]
        assert isinstance(outcome, DecodeFailure), workers
        assert outcome.reason.startswith(reason) and "--allow-truncated" in outcome.reason
        kept = decode_all([scanned(path)], DecodeConfig(allow_truncated=True), workers=workers)[0]
        assert isinstance(kept, DecodedImage) and kept.pixels.shape == (24, 32, 3)  # indexed knowingly


@pytest.mark.parametrize("workers", [0, 1])
def test_decoder_noise_stays_off_the_terminal(tmp_path, capfd, caplog, workers):
    (tmp_path / "webp.tiff").write_bytes(webp_compressed_tiff())
    (tmp_path / "exif.jpg").write_bytes(corrupt_exif_jpeg())
    files = [scanned(tmp_path / "webp.tiff"), scanned(tmp_path / "exif.jpg")]
    with caplog.at_level(logging.DEBUG, logger="vtsearch.decode"):
        failed, decoded = decode_all(files, DecodeConfig(), workers=workers)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert isinstance(failed, DecodeFailure) and "WEBP compression support is not configured" in failed.reason
    assert isinstance(decoded, DecodedImage)
    assert any("Tag data larger than file" in record.getMessage() for record in caplog.records)


def test_concurrent_decodes_leave_pillow_globals_alone(tmp_path):
    before = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    png = io.BytesIO()
    Image.new("RGB", (64, 48), "green").save(png, format="PNG")
    cut = png.getvalue()[:-40]
    configs = [DecodeConfig(max_pixels=5000 + n, allow_truncated=n % 2 == 0) for n in range(6)]
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add((Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES))

    def decode(number):
        for config in configs:
            try:
                decode_bytes(cut if number % 2 else png.getvalue(), f"image {number}", config)
            except ImageDecodeError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(decode, range(12)))
    stop.set()
    watcher.join()
    assert seen == {before}
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_decode_workers_inherit_no_open_files(tmp_path):
    """A build's lock file (any file its process holds open) must not live on in its workers."""
    held = open(tmp_path / "lock", "w")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")

    def open_files(image):
        files = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                info = os.stat(f"/proc/self/fd/{name}")
            except OSError:
                continue
            files.add((info.st_dev, info.st_ino))
        return files

    try:
        held_file = os.fstat(held.fileno())
        outcome = decode_all([scanned(tmp_path / "a.png")], DecodeConfig(), open_files, workers=1)[0]
        assert (held_file.st_dev, held_file.st_ino) not in outcome.pixels
    finally:
        held.close()
