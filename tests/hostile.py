"""A generated corpus of hostile and odd image files, with what vtsearch must do with each.

``write_hostile_corpus(folder)`` writes the files and returns ``{relative path:
Expect}``: either indexed (optionally with the upright size the catalog must record) or
skipped with a reason that starts with the given words. Two more cases need the run
itself: ``VANISHES`` is deleted and ``CHANGES`` rewritten after the scan, before decoding.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VANISHES = "vanishes between scan and decode.png"
CHANGES = "changes between scan and decode.png"


@dataclass(frozen=True)
class Expect:
    indexed: bool
    reason: str = ""  # the start of the recorded reason, when skipped
    size: tuple[int, int] | None = None  # (width, height) recorded, when indexed


INDEXED = Expect(True)


def skipped(reason: str) -> Expect:
    return Expect(False, reason)


def _picture(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2, : size[0] // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small, valid-looking PNG whose header claims a gigantic image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _png(width: int = 32, height: int = 24, seed: int = 0) -> tuple[bytes, bytes]:
    """A PNG's signature and IHDR, and its IDAT data (zlib), RGB."""
    rows = np.random.default_rng(seed).integers(0, 256, (height, width * 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return head, zlib.compress(raw)


def broken_stream_png() -> bytes:
    """A PNG whose IDAT holds a damaged zlib stream (valid chunk CRCs): Pillow's decoder
    fails on it after filling part of the pixels."""
    head, data = _png()
    damaged = bytearray(data)
    for position in range(10, len(damaged) - 10, 7):
        damaged[position] ^= 0x5A
    return head + _png_chunk(b"IDAT", bytes(damaged)) + _png_chunk(b"IEND", b"")


def truncated_end_chunk_png() -> bytes:
    """A PNG whose pixels are whole but whose last chunk is cut off (it claims 100 bytes)."""
    head, data = _png()
    return head + _png_chunk(b"IDAT", data) + struct.pack(">I", 100) + b"tEXt" + b"Com"


def tiny_eps() -> bytes:
    """An Encapsulated PostScript file: Pillow would hand it to Ghostscript to draw."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"


def webp_compressed_tiff() -> bytes:
    """A TIFF claiming WebP compression, which the bundled libtiff cannot decode: libtiff
    says so on the C-level stderr."""
    data = bytearray(_encoded(_picture((16, 16)), "TIFF", compression="tiff_adobe_deflate"))
    offset = struct.unpack("<I", data[4:8])[0]
    for entry in range(struct.unpack("<H", data[offset:offset + 2])[0]):
        position = offset + 2 + 12 * entry
        if struct.unpack("<H", data[position:position + 2])[0] == 259:  # Compression
            data[position + 8:position + 10] = struct.pack("<H", 50001)  # WebP
    return bytes(data)


def corrupt_exif_jpeg() -> bytes:
    """A good JPEG whose EXIF names a tag longer than the EXIF block: Pillow warns."""
    ifd = (struct.pack("<H", 2) + struct.pack("<HHII", 0x010F, 2, 400, 200)
           + struct.pack("<HHII", 0x0112, 3, 1, 1) + b"\x00" * 4)
    return _encoded(_picture((16, 16)), "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + ifd)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    return _encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    image = _picture((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: the upright image is 40 × 80
    return _encoded(image, "JPEG", exif=exif.tobytes())


def write_hostile_corpus(folder: Path) -> dict[str, Expect]:
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = _encoded(_picture(), "JPEG", quality=90)
    good_png = _encoded(_picture(seed=1), "PNG")
    palette = _picture(seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray((np.arange(64 * 48, dtype="<u2").reshape(48, 64) * 20))
    assert sixteen.mode == "I;16"
    files: dict[str, tuple[bytes, Expect]] = {
        "zero-byte.jpg": (b"", skipped("empty file")),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], skipped("truncated")),
        "truncated.png": (good_png[: len(good_png) // 2], skipped("truncated")),
        "a text file.jpg": (b"these are words, not pixels\n" * 10, skipped("not an image")),
        "random bytes.webp": (np.random.default_rng(3).bytes(5000), skipped("not an image")),
        "bomb.png": (bomb_png(), skipped("decompression bomb")),
        "cmyk.jpg": (_encoded(_picture(seed=4).convert("CMYK"), "JPEG"), INDEXED),
        "sixteen-bit.png": (_encoded(sixteen, "PNG"), INDEXED),
        "palette with transparency.png": (_encoded(palette, "PNG"), INDEXED),
        "la.png": (_encoded(_picture(seed=5).convert("LA"), "PNG"), INDEXED),
        "p.gif": (_encoded(_picture(seed=6).convert("P"), "GIF"), INDEXED),
        "float.tiff": (_encoded(Image.fromarray(np.linspace(-1, 3, 64 * 48, dtype=np.float32)
                                                .reshape(48, 64)), "TIFF"), INDEXED),
        "animated.gif": (_animated("GIF"), INDEXED),
        "animated.webp": (_animated("WEBP"), INDEXED),
        "exif rotated.jpg": (_exif_rotated_jpeg(), Expect(True, size=(40, 80))),
        "grayscale.jpg": (_encoded(_picture(seed=7).convert("L"), "JPEG"), INDEXED),
        "one pixel.png": (_encoded(Image.new("RGB", (1, 1), "white"), "PNG"), Expect(True, size=(1, 1))),
        "very wide.png": (_encoded(Image.new("RGB", (30_000, 3), "navy"), "PNG"), Expect(True, size=(30_000, 3))),
        "very tall.jpg": (_encoded(Image.new("RGB", (4, 12_000), "olive"), "JPEG"), Expect(True, size=(4, 12_000))),
        "big photo.jpg": (_encoded(_picture((6000, 4000), seed=8), "JPEG", quality=80), Expect(True, size=(6000, 4000))),
        "a jpeg named.png": (good_jpeg, INDEXED),
        "ünïcödé 名前 — with  spaces.jpg": (good_jpeg, INDEXED),
        "UPPER CASE.JPEG": (_encoded(_picture(seed=9), "JPEG"), INDEXED),
        "no permission.png": (good_png, INDEXED if os.geteuid() == 0 else skipped("unreadable")),
        "folder named like an image.jpg/inside.png": (_encoded(_picture(seed=10), "PNG"), INDEXED),
        "broken data stream.png": (broken_stream_png(), skipped("damaged")),
        "truncated end chunk.png": (truncated_end_chunk_png(), skipped("truncated")),
        "postscript.eps": (tiny_eps(), skipped("not a raster image format vtsearch reads: EPS")),
        "postscript named.jpg": (tiny_eps(), skipped("not a raster image format vtsearch reads: EPS")),
        "webp-compressed.tiff": (webp_compressed_tiff(), skipped("decode error")),
        "corrupt exif.jpg": (corrupt_exif_jpeg(), INDEXED),
        VANISHES: (good_png, skipped("missing")),
        CHANGES: (good_png, INDEXED),
    }
    for name, (data, _expect) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(folder / "no permission.png", 0)  # root reads it anyway
    os.symlink(".", folder / "loop")  # a link back to its own folder
    os.symlink(folder / "missing target.jpg", folder / "dangling link.jpg")
    return {name: expect for name, (_data, expect) in files.items()}


__all__ = ["write_hostile_corpus", "Expect", "VANISHES", "CHANGES", "bomb_png", "broken_stream_png",
           "truncated_end_chunk_png", "tiny_eps", "webp_compressed_tiff", "corrupt_exif_jpeg"]
