"""Stage: decode. Read image files and turn them into the encoder's input tensors.

Decoding is defensive. Only raster formats on an explicit allow-list are opened
(:mod:`.formats`: never EPS/PostScript, which would run Ghostscript, nor vector or
document formats). EXIF orientation is applied, every Pillow mode becomes RGB (alpha is
composited on white, 16-bit and float images are rescaled rather than clipped),
animations give their first frame, images above a pixel cap are refused as decompression
bombs before their pixels are read, a file whose pixels fail to decode is refused (or,
with ``allow_truncated``, kept with what decoded), and JPEGs decode in draft mode at the
smallest scale that still covers the model's input. Extremely long or wide images are cut
around the centre before scaling (see :func:`limit_aspect`).

Pillow runs only in vtsearch's decode processes, each decode bounded by
``DecodeConfig.timeout_s`` in whatever thread asked: the build's worker processes
(:mod:`.batches`), killed at a file's deadline, and, for everything else (query images,
uploads, thumbnails, a build with no workers), the sandbox's children
(:mod:`.sandbox`). Pillow's process-wide settings are set only there, and what codecs
print never reaches the terminal (:mod:`.noise`). A file that fails becomes a
:class:`~vtsearch.records.DecodeFailure` with a reason; nothing here raises for a bad file.
"""

from .batches import decode_batches
from .files import (
    Transform, content_hash, decode_bytes, decode_file, decode_query_bytes, decode_query_image, hash_file, load_image,
)
from .formats import RASTER_FORMATS, REFUSED_REASON, peek_size, readable_formats
from .pillow import Decoded
from .pixels import limit_aspect, to_rgb
from .sandbox import DecodeSandbox, shared_sandbox

__all__ = [
    "decode_batches", "decode_file", "decode_bytes", "decode_query_bytes", "decode_query_image",
    "load_image", "content_hash", "hash_file", "to_rgb", "limit_aspect", "Transform", "Decoded",
    "DecodeSandbox", "shared_sandbox", "RASTER_FORMATS", "REFUSED_REASON", "readable_formats", "peek_size",
]
