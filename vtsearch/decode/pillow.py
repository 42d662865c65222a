"""One decode with Pillow: bytes to an upright RGB image, or a reason it cannot be used.

Runs only in vtsearch's decode processes (the sandbox, the build's workers): Pillow's
pixel limit and truncation policy are module globals, so :func:`decode_here` sets them
for the process it runs in, which decodes nothing else. The calling process never
touches them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..config import DecodeConfig
from .formats import REFUSED_REASON, readable_formats, refused_format
from .noise import noise_collected, with_noise
from .pixels import limit_aspect, to_rgb

EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # these swap width and height
TRUNCATED_HINT = "(index what decodes with --allow-truncated)"


class Skip(Exception):
    """A file cannot be used; the message is the reason recorded or reported."""


@dataclass(frozen=True)
class Decoded:
    """An upright RGB image and what the file was: its upright full-resolution size
    (before draft scaling or aspect cuts) and format, and what the decoder said."""

    image: Image.Image
    width: int
    height: int
    format: str
    noise: str = ""


def decode_here(data: bytes | bytearray, config: DecodeConfig) -> Decoded:
    """Decode ``data`` in this process, or raise :class:`Skip` with the reason (and, when
    the decoder said anything, what it said). Call only in a decode process."""
    with noise_collected() as noise:
        try:
            decoded, reason = _decode(data, config), None
        except Skip as skip:
            decoded, reason = None, str(skip)
        except MemoryError:
            decoded, reason = None, "too large: out of memory while decoding"
        except Exception as error:  # a codec bug must cost one file
            decoded, reason = None, f"decode error: {type(error).__name__}: {error}"
    if decoded is None:
        raise Skip(with_noise(reason, noise.text))
    return replace(decoded, noise=noise.text)


def _decode(data: bytes | bytearray, config: DecodeConfig) -> Decoded:
    if not data:
        raise Skip("empty file: 0 bytes")
    # This process's own Pillow: the bomb check below runs first, with our limit;
    # Pillow's check (at twice the limit) still guards frames and embedded images.
    Image.MAX_IMAGE_PIXELS = config.max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = config.allow_truncated
    image = _open(data)
    width, height = image.size
    if width * height > config.max_pixels:
        raise Skip(
            f"decompression bomb: {width}x{height} = {width * height} pixels is over "
            f"the limit of {config.max_pixels} (raise it with --max-pixels)"
        )
    image_format = image.format or "unknown"
    if config.draft and image_format == "JPEG":
        try:
            image.draft("RGB", (config.image_size, config.image_size))
        except (OSError, ValueError):
            pass
    _load(image, config)  # before EXIF: reading a PNG's EXIF loads it, hiding errors
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not cost the image
        orientation = 1
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # an odd orientation tag: keep the pixels as stored
        pass
    try:
        return Decoded(to_rgb(limit_aspect(image, config.max_aspect)), width, height, image_format)
    except (OSError, ValueError) as error:
        raise Skip(f"decode error: cannot convert mode {image.mode}: {error}") from None


def _open(data: bytes | bytearray) -> ImageFile.ImageFile:
    try:
        return Image.open(io.BytesIO(data), formats=readable_formats())
    except UnidentifiedImageError:
        refused = refused_format(data)
        if refused:
            raise Skip(f"{REFUSED_REASON}: {refused}") from None
        raise Skip("not an image: Pillow cannot identify this file") from None
    except Image.DecompressionBombError as error:
        raise Skip(f"decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise Skip(f"not an image: {error}") from None


def _load(image: ImageFile.ImageFile, config: DecodeConfig) -> None:
    """Decode the pixels once; a failure is the file's reason, never swallowed."""
    try:
        image.load()
    except OSError as error:
        message = str(error)
        if config.allow_truncated and not image.tile:
            return  # every pixel was decoded; only what follows them is damaged
        hint = "" if config.allow_truncated else f" {TRUNCATED_HINT}"
        if "truncated" in message.lower():
            raise Skip(f"truncated: {message}{hint}") from None
        if "data stream" in message:  # zlib/LZW data that stops making sense
            raise Skip(f"damaged: {message}{hint}") from None
        raise Skip(f"decode error: {message}") from None
    except (SyntaxError, ValueError, EOFError) as error:
        raise Skip(f"decode error: {error}") from None


__all__ = ["Decoded", "Skip", "decode_here"]
