"""Pixel conversions of a decoded image: any Pillow mode to RGB, extreme strips cut."""

from __future__ import annotations

import numpy as np
from PIL import Image


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


__all__ = ["to_rgb", "limit_aspect"]
