"""Which image formats vtsearch decodes: an explicit allow-list of raster formats.

Pillow can open more than rasters. Its EPS/PS reader runs Ghostscript on the file (a
program, from whoever wrote the file), WMF/EMF are vector drawings, and rarely used
codecs are attack surface nobody here needs. Every decode (an indexed file, a query
image, an upload, a thumbnail) opens images with ``formats=readable_formats()`` only.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, UnidentifiedImageError, features

from ..errors import ImageDecodeError

# PPM covers PBM, PGM and PNM; AVIF and HEIF count only where their codec is present.
RASTER_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM", "TGA", "AVIF", "HEIF")
REFUSED_REASON = "not a raster image format vtsearch reads"
_DOCUMENT_SIGNATURES = {b"%PDF": "PDF"}  # formats Pillow cannot read at all, named in reasons


def readable_formats() -> tuple[str, ...]:
    """The allow-listed formats this Pillow can open (plugins register on first call)."""
    Image.init()
    enable_optional_plugins()
    return tuple(name for name in RASTER_FORMATS if name in Image.OPEN and _codec_present(name))


@lru_cache(maxsize=None)
def _codec_present(name: str) -> bool:
    if name == "AVIF":
        return bool(features.check("avif"))
    return True


@lru_cache(maxsize=1)
def enable_optional_plugins() -> None:
    """HEIF, where pillow-heif is installed (its opener registers only when asked), so that
    scans list ``.heic`` files and uploads and decodes read them alike."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def refused_format(data: bytes) -> str | None:
    """The name of the non-allow-listed format ``data`` looks like (EPS, WMF, PDF, ...),
    judged from its first bytes by Pillow's own signature checks; None when unknown.

    Only the plugins' ``accept`` functions run: byte comparisons, nothing is opened.
    """
    prefix = data[:16]
    for signature, name in _DOCUMENT_SIGNATURES.items():
        if prefix.startswith(signature):
            return name
    allowed = set(readable_formats())
    for name, (_factory, accept) in Image.OPEN.items():
        if name in allowed or accept is None:
            continue
        try:
            matched = accept(prefix)
        except Exception:  # a plugin's check on a short prefix
            continue
        if matched and not isinstance(matched, str):  # a str is Pillow's "almost" warning
            return name
    return None


def peek_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header of an allow-listed raster image; nothing is decoded.

    Raises :class:`ImageDecodeError` for anything else; Pillow's
    ``DecompressionBombError`` passes through (a header far over its own limit).
    """
    try:
        with Image.open(io.BytesIO(data), formats=readable_formats()) as image:
            return image.size
    except Image.DecompressionBombError:
        raise
    except UnidentifiedImageError:
        refused = refused_format(data)
        raise ImageDecodeError(f"{REFUSED_REASON}: {refused}" if refused else "not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"not an image: {error}") from None


__all__ = ["RASTER_FORMATS", "REFUSED_REASON", "readable_formats", "refused_format", "peek_size",
           "enable_optional_plugins"]
