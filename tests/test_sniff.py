"""Content-type detection (repligate.sniff) as a fetch reports it: the file's first bytes
decide its type whatever the sender labelled it, and bytes that match no magic number keep
the sender's label. Served as data: URIs, so no network is involved.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
import zipfile

import pytest
from PIL import Image

from repligate.fetch import Fetcher


def _saved(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out, fmt)
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "a")
    return out.getvalue()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (_saved("GIF"), "image/gif"),
        (_saved("WEBP"), "image/webp"),
        (_saved("BMP"), "image/bmp"),
        (_saved("TIFF"), "image/tiff"),
        (b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2", "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (_zip(), "application/zip"),
        (_tar(), "application/x-tar"),
        (gzip.compress(b"a", mtime=0), "application/gzip"),
        (b"BM but only text", "application/octet-stream"),
    ],
)
def test_the_bytes_decide_the_content_type(data: bytes, content_type: str) -> None:
    value = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    assert Fetcher().fetch(value, field="file").content_type == content_type
