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
