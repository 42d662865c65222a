import io

import numpy as np
import pytest
import torch
from PIL import Image

from vtsearch.config import DecodeConfig
from vtsearch.decode import decode_batches, decode_file, load_image, to_rgb
from vtsearch.records import DecodedImage, DecodeFailure, ScannedFile


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def scanned(path) -> ScannedFile:
    stat = path.stat()
    return ScannedFile(str(path), stat.st_size, stat.st_mtime_ns)


def decode(path, **config):
    return decode_file(scanned(path), DecodeConfig(**config), as_tensor)


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "I", "F", "I;16", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (8, 6))
    assert to_rgb(image).mode == "RGB"
    assert to_rgb(image).size == (8, 6)


def test_sixteen_bit_is_rescaled_not_clipped():
    values = np.full((4, 4), 32768, dtype=np.uint16)
    rgb = to_rgb(Image.frombytes("I;16", (4, 4), values.tobytes()))
    assert 120 < np.asarray(rgb)[0, 0, 0] < 135  # mid grey, not white


def test_transparent_areas_become_white_not_black():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied_and_reported(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 40×20, shown 20×40
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    outcome = decode(path, draft=False)
    assert isinstance(outcome, DecodedImage)
    assert (outcome.width, outcome.height) == (20, 40)
    assert tuple(outcome.pixels.shape) == (3, 40, 20)


def test_animation_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    outcome = decode(path)
    assert isinstance(outcome, DecodedImage)
    assert outcome.pixels[0, 0, 0] > 200 and outcome.pixels[2, 0, 0] < 50  # red


def test_jpeg_draft_keeps_at_least_the_model_input_size():
    data = encoded(Image.new("RGB", (2000, 1500), "blue"), "JPEG")
    decoded = load_image(data, DecodeConfig(image_size=224, draft=True))
    assert (decoded.width, decoded.height, decoded.format) == (2000, 1500, "JPEG")
    assert min(decoded.image.size) >= 224 and decoded.image.size[0] < 2000


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is text, not pixels", "not an image"),
    ],
)
def test_bad_files_become_failures_with_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    outcome = decode(path)
    assert isinstance(outcome, DecodeFailure)
    assert outcome.reason.startswith(reason)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_fail_unless_allowed(tmp_path, fmt):
    rng = np.random.default_rng(0)
    data = encoded(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    outcome = decode(path)
    assert isinstance(outcome, DecodeFailure)
    assert outcome.reason.startswith("truncated"), outcome.reason
    assert "--allow-truncated" in outcome.reason
    assert isinstance(decode(path, allow_truncated=True), DecodedImage)


def test_pixel_cap_refuses_bombs_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    outcome = decode(path, max_pixels=100_000)
    assert isinstance(outcome, DecodeFailure)
    assert outcome.reason.startswith("decompression bomb")
    assert isinstance(decode(path, max_pixels=120_000), DecodedImage)


def test_pillow_globals_are_left_as_they_were(tmp_path):
    from PIL import ImageFile

    before = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    decode(path, allow_truncated=True, max_pixels=10)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def test_vanished_and_unreadable_files(tmp_path):
    gone = ScannedFile(str(tmp_path / "gone.jpg"), 10, 0)
    outcome = decode_file(gone, DecodeConfig(), as_tensor)
    assert isinstance(outcome, DecodeFailure) and outcome.reason.startswith("missing")
    folder = tmp_path / "dir.jpg"
    folder.mkdir()
    outcome = decode_file(ScannedFile(str(folder), 0, 0), DecodeConfig(), as_tensor)
    assert isinstance(outcome, DecodeFailure) and outcome.reason.startswith("unreadable")


def test_worker_processes_decode_in_order(tmp_path, tiny_encoder):
    paths = []
    for number in range(10):
        path = tmp_path / f"{number}.png"
        Image.new("RGB", (30 + number, 20), (number * 20, 0, 0)).save(path)
        paths.append(path)
    (tmp_path / "bad.png").write_bytes(b"nope")
    files = [scanned(p) for p in paths] + [scanned(tmp_path / "bad.png")]
    outcomes = [o for batch in decode_batches(files, DecodeConfig(image_size=64),
                                              tiny_encoder.preprocess, 4, workers=2) for o in batch]
    assert [o.source.path for o in outcomes] == [f.path for f in files]
    assert all(isinstance(o, DecodedImage) for o in outcomes[:-1])
    assert isinstance(outcomes[-1], DecodeFailure)
    assert tuple(outcomes[0].pixels.shape) == (3, 64, 64)
