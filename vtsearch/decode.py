"""Stage: decode. Read image files and turn them into the encoder's input tensors.

Decoding is defensive: EXIF orientation is applied, every Pillow mode becomes RGB
(alpha is composited on white, 16-bit and float images are rescaled rather than
clipped), animations give their first frame, images above a pixel cap are refused as
decompression bombs before their pixels are read, and JPEGs decode in draft mode at the
smallest scale that still covers the model's input. Extremely long or wide images are cut
around the centre before scaling (see :func:`limit_aspect`), and one file may take at most
``timeout_s`` seconds, so each file is bounded in memory and time. A file that fails becomes a
:class:`DecodeFailure` with a reason; nothing here raises for a bad file.

Files are decoded in worker processes (a torch ``DataLoader``), overlapped with encoding.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .config import DecodeConfig
from .errors import ImageDecodeError
from .records import DecodedImage, DecodeFailure, DecodeOutcome, ScannedFile

Transform = Callable[[Image.Image], torch.Tensor]

EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # these swap width and height


class _Skip(Exception):
    """Internal: a file is not decodable; the message is the recorded reason."""


class _TooSlow(BaseException):
    """Internal: the time limit expired (a BaseException, so no ``except Exception``
    inside the decoding path can swallow it)."""


@contextmanager
def _pillow_limits(config: DecodeConfig) -> Iterator[None]:
    """Apply our pixel cap and truncation policy instead of Pillow's globals.

    Pillow keeps both as module globals; they are swapped only for the duration of one
    decode so a process embedding vtsearch keeps its own settings.
    """
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = None  # our own check below runs first, with our limit
    ImageFile.LOAD_TRUNCATED_IMAGES = config.allow_truncated
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def content_hash(data: bytes) -> str:
    """A fast content hash (BLAKE2b, 128 bits) used to recognise unchanged content."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: str) -> str:
    with open(path, "rb") as handle:
        return content_hash(handle.read())


def _read(path: str) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as handle:
            mtime_ns = os.fstat(handle.fileno()).st_mtime_ns
            return handle.read(), mtime_ns
    except FileNotFoundError:
        raise _Skip("missing: the file vanished before it was decoded") from None
    except PermissionError:
        raise _Skip("unreadable: permission denied") from None
    except IsADirectoryError:
        raise _Skip("unreadable: it is a directory") from None
    except OSError as error:
        raise _Skip(f"unreadable: {error.strerror or error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB without clipping or black transparent areas."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if mode.startswith("I;16"):
            scaled = values / 257.0
        else:  # 32-bit int or float: stretch the range actually used
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        gray = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def limit_aspect(image: Image.Image, max_aspect: float | None) -> Image.Image:
    """Cut an extremely long or wide image to ``max_aspect`` around its centre.

    Only for preprocessing that scales the short side and crops the centre square: that
    square lies inside the cut, so the model sees the same pixels, while the scaled
    image stays small (a 30000 × 3 strip would otherwise scale to 2,240,000 × 224).
    """
    if max_aspect is None:
        return image
    width, height = image.size
    short, long = min(width, height), max(width, height)
    keep = max(1, int(round(short * max_aspect)))
    if long <= keep:
        return image
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_TooSlow`` when the block runs longer than ``seconds`` (SIGALRM).

    Active only in a process's main thread while nothing else uses SIGALRM: decode
    worker processes, or the CLI. Pillow decodes in chunks, returning to Python between
    them, so a slow file is interrupted within a chunk.
    """
    usable = (threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))
    if not usable or seconds <= 0:
        yield
        return

    def expire(_signum, _frame):
        raise _TooSlow(f"too slow: decoding took over {seconds:g} s (a hostile or broken file?)")

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def load_image(data: bytes, config: DecodeConfig) -> tuple[Image.Image, int, int, str]:
    """Decode bytes to an upright RGB image; returns (image, width, height, format).

    Width and height are the upright full-resolution size, before any draft scaling.
    Raises ``_Skip`` with the reason when the bytes are not a usable image.
    """
    if not data:
        raise _Skip("empty file: 0 bytes")
    with _pillow_limits(config):
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _Skip("not an image: Pillow cannot identify this file") from None
        except Image.DecompressionBombError as error:
            raise _Skip(f"decompression bomb: {error}") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise _Skip(f"not an image: {error}") from None
        width, height = image.size
        if width * height > config.max_pixels:
            raise _Skip(
                f"decompression bomb: {width}x{height} = {width * height} pixels is over "
                f"the limit of {config.max_pixels} (raise it with --max-pixels)"
            )
        image_format = image.format or "unknown"
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # malformed EXIF must not cost the image
            orientation = 1
        if config.draft and image_format == "JPEG":
            try:
                image.draft("RGB", (config.image_size, config.image_size))
            except (OSError, ValueError):
                pass
        try:
            image.load()
        except OSError as error:
            message = str(error)
            if "truncated" in message or "broken data stream" in message:
                raise _Skip(
                    f"truncated: {message} (index what decodes with --allow-truncated)"
                ) from None
            raise _Skip(f"decode error: {message}") from None
        except (SyntaxError, ValueError, EOFError) as error:
            raise _Skip(f"decode error: {error}") from None
        if orientation in ROTATED_ORIENTATIONS:
            width, height = height, width
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # an odd orientation tag: keep the pixels as stored
            pass
        try:
            return to_rgb(limit_aspect(image, config.max_aspect)), width, height, image_format
        except (OSError, ValueError) as error:
            raise _Skip(f"decode error: cannot convert mode {image.mode}: {error}") from None


def decode_file(source: ScannedFile, config: DecodeConfig, transform: Transform) -> DecodeOutcome:
    """Read, hash, decode and preprocess one file; never raises for a bad file."""
    digest = None
    try:
        data, mtime_ns = _read(source.path)
        digest = content_hash(data)
        with time_limit(config.timeout_s):
            image, width, height, image_format = load_image(data, config)
            pixels = transform(image)
    except (_Skip, _TooSlow) as skip:
        return DecodeFailure(source=source, reason=str(skip), content_hash=digest)
    except MemoryError:
        return DecodeFailure(source=source, reason="too large: out of memory while decoding")
    except Exception as error:  # a codec bug must cost one file, not the run
        return DecodeFailure(
            source=source, reason=f"decode error: {type(error).__name__}: {error}",
            content_hash=digest,
        )
    if len(data) != source.size or mtime_ns != source.mtime_ns:
        source = replace(source, size=len(data), mtime_ns=mtime_ns)  # changed since scan
    return DecodedImage(
        source=source, pixels=pixels, width=width, height=height, format=image_format,
        content_hash=digest, size=len(data),
    )


def decode_query_image(path: str, config: DecodeConfig, transform: Transform) -> torch.Tensor:
    """Decode a query image or raise :class:`ImageDecodeError` with the reason."""
    try:
        os.stat(path)
    except OSError as error:
        raise ImageDecodeError(f"cannot read query image {path}: {error.strerror}") from None
    try:
        data, _ = _read(path)
    except _Skip as skip:
        raise ImageDecodeError(f"cannot read query image {path}: {skip}") from None
    return decode_query_bytes(data, path, config, transform)


def decode_query_bytes(data: bytes, name: str, config: DecodeConfig, transform: Transform) -> torch.Tensor:
    """Decode a query image's bytes (an upload, a file) or raise :class:`ImageDecodeError`."""
    return decode_bytes(data, f"query image {name}", config, transform)


def decode_bytes(data: bytes, name: str, config: DecodeConfig, transform: Transform | None = None) -> Any:
    """An upright RGB image from ``data`` (``transform``-ed when given), or
    :class:`ImageDecodeError` saying why ``name`` cannot be used."""
    try:
        with time_limit(config.timeout_s):
            image, _, _, _ = load_image(data, config)
            return transform(image) if transform is not None else image
    except (_Skip, _TooSlow) as skip:
        reason = str(skip)
    except MemoryError:
        reason = "too large: out of memory while decoding"
    except Exception as error:  # a codec bug
        reason = f"decode error: {type(error).__name__}: {error}"
    raise ImageDecodeError(f"cannot use {name}: {reason}")


class _DecodeDataset(Dataset):
    def __init__(self, files: Sequence[ScannedFile], config: DecodeConfig, transform: Transform):
        self.files = files
        self.config = config
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int) -> DecodeOutcome:
        return decode_file(self.files[position], self.config, self.transform)


def _as_list(batch: list[DecodeOutcome]) -> list[DecodeOutcome]:
    return batch


def decode_batches(
    files: Sequence[ScannedFile],
    config: DecodeConfig,
    transform: Transform,
    batch_size: int,
    workers: int,
) -> Iterator[list[DecodeOutcome]]:
    """Decode ``files`` in order, in batches, in ``workers`` processes (0 = in process).

    Workers run ahead of the consumer (prefetch), so decoding overlaps encoding.
    """
    if not files:
        return iter(())
    loader = DataLoader(
        _DecodeDataset(files, config, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    return iter(loader)
