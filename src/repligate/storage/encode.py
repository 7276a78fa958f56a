"""Encoding model outputs into files (PNG today; more formats come with their models)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from repligate.events import OutputFile

if TYPE_CHECKING:
    from PIL.Image import Image


def png(image: Image, name: str, compress_level: int = 4) -> OutputFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/png")


def webp(image: Image, name: str, quality: int = 80) -> OutputFile:
    """Lossy WebP at ``quality`` (0-100), as the Flux originals save their outputs."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/webp")


def jpeg(image: Image, name: str, quality: int = 80) -> OutputFile:
    """Baseline JPEG at ``quality`` (0-100), with optimised Huffman tables as the Flux
    originals save it. Images with alpha are flattened to RGB (JPEG has no alpha)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/jpeg")
