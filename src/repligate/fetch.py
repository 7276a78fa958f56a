"""Safe fetching of file inputs (http(s) URLs and data URIs), for the whole server.

Public surface (runners and the execution rely on it):
- ``Fetcher.fetch(value, field=...) -> FetchedFile``
- ``Fetcher.download_to(url, path, field=..., max_bytes=None)`` for large files (tarballs)
- ``FetchedFile.image(exif_transpose=True, mode="RGB") -> PIL.Image.Image``
- ``FetchRefused``: a user-caused refusal whose message names the input and the reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from PIL.Image import Image

    from repligate.settings import Settings

_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


class FetchRefused(Exception):
    """A file input could not be used; the message names the input and why."""


@dataclass(frozen=True)
class FetchedFile:
    field: str
    data: bytes
    content_type: str
    max_pixels: int = 64_000_000

    def image(self, *, exif_transpose: bool = True, mode: str | None = "RGB") -> Image:
        from PIL import Image as PILImage
        from PIL import ImageOps, UnidentifiedImageError

        try:
            with PILImage.open(io.BytesIO(self.data)) as probe:
                width, height = probe.size
                if width * height > self.max_pixels:
                    raise FetchRefused(
                        f"{self.field}: the image is {width}x{height}, more than "
                        f"{self.max_pixels} pixels"
                    )
                probe.load()
                image = ImageOps.exif_transpose(probe) if exif_transpose else probe.copy()
        except (UnidentifiedImageError, OSError, PILImage.DecompressionBombError) as exc:
            raise FetchRefused(f"{self.field}: the file is not an image we can read") from exc
        return image.convert(mode) if mode else image


class Fetcher:
    def __init__(
        self,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        timeout: float = 60.0,
        max_redirects: int = 5,
        allow_private: bool = False,
        max_pixels: int = 64_000_000,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.max_pixels = max_pixels

    @classmethod
    def from_settings(cls, settings: Settings) -> Fetcher:
        return cls()

    def fetch(self, value: str, *, field: str) -> FetchedFile:
        if value.startswith("data:"):
            data, content_type = self._decode_data_uri(value, field)
            return FetchedFile(field, data, content_type, self.max_pixels)
        raise FetchRefused(f"{field}: fetching URLs is not available yet; send a data: URI")

    def download_to(
        self, url: str, path: Path, *, field: str, max_bytes: int | None = None
    ) -> None:
        fetched = self.fetch(url, field=field)
        path.write_bytes(fetched.data)

    def _decode_data_uri(self, value: str, field: str) -> tuple[bytes, str]:
        match = _DATA_URI.match(value)
        if match is None:
            raise FetchRefused(f"{field}: not a valid data URI")
        params = match.group("params").split(";")
        payload = match.group("data")
        try:
            if "base64" in params:
                data = base64.b64decode(payload, validate=False)
            else:
                data = unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise FetchRefused(f"{field}: the data URI's base64 is not valid") from exc
        if len(data) > self.max_bytes:
            raise FetchRefused(f"{field}: the file is larger than {self.max_bytes} bytes")
        return data, match.group("type") or "application/octet-stream"
