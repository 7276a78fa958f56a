"""Data URIs (``data:[<type>][;base64],<data>``): decoded leniently in form, strictly in
content. ``decode`` raises ValueError with the reason (the caller names the input)."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


def decode(value: str, max_bytes: int | None = None) -> tuple[bytes, str]:
    """The bytes and media type of the data URI ``value``, refused past ``max_bytes``."""
    match = _DATA_URI.match(value)
    if match is None:
        raise ValueError("not a valid data URI (expected data:[<type>][;base64],<data>)")
    params = [p.strip().lower() for p in match.group("params").split(";")]
    payload = match.group("data")
    is_base64 = "base64" in params
    if max_bytes is not None:
        # Judged before decoding, so an oversized payload costs no memory to refuse.
        estimate = len(payload.rstrip("=")) * 3 // 4 if is_base64 else len(payload) // 3
        if estimate > max_bytes:
            raise ValueError(f"the data URI holds about {estimate} bytes, more than {max_bytes}")
    data = _b64decode(payload) if is_base64 else unquote_to_bytes(payload)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the data URI holds {len(data)} bytes, more than {max_bytes}")
    return data, match.group("type").strip() or "text/plain"


def _b64decode(payload: str) -> bytes:
    # Lenient in form (whitespace, percent-encoding, URL-safe alphabet, missing padding),
    # strict in content: any other character is refused, not silently dropped.
    text = re.sub(r"\s+", "", payload)
    if "%" in text:
        text = unquote_to_bytes(text).decode("latin-1")
    text = text.replace("-", "+").replace("_", "/").rstrip("=")
    if len(text) % 4 == 1:
        raise ValueError("the data URI's base64 is not valid (truncated)")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the data URI's base64 is not valid") from exc
