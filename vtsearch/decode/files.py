"""Files and bytes to model input: read, hash, decode (bounded, in a decode process),
preprocess. Per-file failures are records with a reason; query images raise
:class:`ImageDecodeError`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any, Callable

from PIL import Image

from ..config import DecodeConfig
from ..errors import ImageDecodeError
from ..records import DecodedImage, DecodeFailure, DecodeOutcome, ScannedFile
from .noise import log_noise
from .pillow import Decoded, Skip
from .sandbox import DecodeSandbox, shared_sandbox

Transform = Callable[[Image.Image], Any]  # a model's preprocessing: RGB image → (3, H, W) tensor
Load = Callable[[bytes, DecodeConfig], Decoded]  # bytes → Decoded, or raise Skip


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
        raise Skip("missing: the file vanished before it was decoded") from None
    except PermissionError:
        raise Skip("unreadable: permission denied") from None
    except IsADirectoryError:
        raise Skip("unreadable: it is a directory") from None
    except OSError as error:
        raise Skip(f"unreadable: {error.strerror or error}") from None


def load_image(data: bytes, config: DecodeConfig, sandbox: DecodeSandbox | None = None) -> Decoded:
    """Decode ``data`` in a sandboxed child within ``config.timeout_s``, or raise
    :class:`ImageDecodeError` with the reason."""
    try:
        return (sandbox or shared_sandbox()).decode(data, config)
    except Skip as skip:
        raise ImageDecodeError(str(skip)) from None


def decode_source(source: ScannedFile, config: DecodeConfig, transform: Transform,
                  load: Load) -> tuple[DecodeOutcome, str]:
    """Read, hash, decode (with ``load``) and preprocess one file; never raises for a bad
    file. Returns the outcome and, for a decoded file, what its decoder said."""
    digest = None
    try:
        data, mtime_ns = _read(source.path)
        digest = content_hash(data)
        decoded = load(data, config)
        pixels = transform(decoded.image)
    except Skip as skip:
        return DecodeFailure(source=source, reason=str(skip), content_hash=digest), ""
    except MemoryError:
        return DecodeFailure(source=source, reason="too large: out of memory while decoding",
                             content_hash=digest), ""
    except Exception as error:  # a preprocessing bug must cost one file, not the run
        reason = f"decode error: {type(error).__name__}: {error}"
        return DecodeFailure(source=source, reason=reason, content_hash=digest), ""
    if len(data) != source.size or mtime_ns != source.mtime_ns:
        source = replace(source, size=len(data), mtime_ns=mtime_ns)  # changed since scan
    outcome = DecodedImage(source=source, pixels=pixels, width=decoded.width, height=decoded.height,
                           format=decoded.format, content_hash=digest, size=len(data))
    return outcome, decoded.noise


def decode_file(source: ScannedFile, config: DecodeConfig, transform: Transform,
                sandbox: DecodeSandbox | None = None) -> DecodeOutcome:
    """Read, hash, decode (in the sandbox) and preprocess one file; never raises for a bad file."""
    outcome, noise = decode_source(source, config, transform, (sandbox or shared_sandbox()).decode)
    log_noise(source.path, noise)
    return outcome


def decode_query_image(path: str, config: DecodeConfig, transform: Transform,
                       sandbox: DecodeSandbox | None = None) -> Any:
    """Decode a query image or raise :class:`ImageDecodeError` with the reason."""
    try:
        os.stat(path)
    except OSError as error:
        raise ImageDecodeError(f"cannot read query image {path}: {error.strerror}") from None
    try:
        data, _ = _read(path)
    except Skip as skip:
        raise ImageDecodeError(f"cannot read query image {path}: {skip}") from None
    return decode_query_bytes(data, path, config, transform, sandbox)


def decode_query_bytes(data: bytes, name: str, config: DecodeConfig, transform: Transform,
                       sandbox: DecodeSandbox | None = None) -> Any:
    """Decode a query image's bytes (an upload, a file) or raise :class:`ImageDecodeError`."""
    return decode_bytes(data, f"query image {name}", config, transform, sandbox)


def decode_bytes(data: bytes, name: str, config: DecodeConfig, transform: Transform | None = None,
                 sandbox: DecodeSandbox | None = None) -> Any:
    """An upright RGB image from ``data`` (``transform``-ed when given), or
    :class:`ImageDecodeError` saying why ``name`` cannot be used. The decode runs in the
    sandbox, bounded by ``config.timeout_s`` in whatever thread calls this."""
    try:
        decoded = (sandbox or shared_sandbox()).decode(data, config)
        log_noise(name, decoded.noise)
        return transform(decoded.image) if transform is not None else decoded.image
    except Skip as skip:
        reason = str(skip)
    except MemoryError:
        reason = "too large: out of memory while decoding"
    except Exception as error:  # a preprocessing bug
        reason = f"decode error: {type(error).__name__}: {error}"
    raise ImageDecodeError(f"cannot use {name}: {reason}")


__all__ = ["Transform", "content_hash", "hash_file", "load_image", "decode_source", "decode_file",
           "decode_query_image", "decode_query_bytes", "decode_bytes"]
