"""What a file is, from its first bytes (magic numbers), falling back to what the sender said.

The bytes win over a Content-Type header or a data URI's media type: servers and clients
often label files generically (application/octet-stream) or wrongly.
"""

from __future__ import annotations

# (offset, magic, content type), checked in order.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"\x28\xb5\x2f\xfd", "application/zstd"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (257, b"ustar", "application/x-tar"),
]

# ISO base media (MP4 family): the brand after "ftyp" says which.
_FTYP_BRANDS = {
    b"qt  ": "video/quicktime",
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"M4A ": "audio/mp4",
}
_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff(data: bytes) -> str | None:
    """The content type the bytes announce, or None when they announce nothing we know."""
    for offset, magic, content_type in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return content_type
    if data[:4] == b"RIFF" and len(data) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(
            data[8:12]
        )
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "video/mp4")
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM is Matroska with doctype "webm"
        return "video/webm" if b"webm" in data[:64] else "video/x-matroska"
    # "BM" alone is too weak (text can start so): also the zero reserved bytes and a known
    # DIB header size.
    if (
        data[:2] == b"BM"
        and data[6:10] == b"\x00\x00\x00\x00"
        and int.from_bytes(data[14:18], "little") in _DIB_HEADER_SIZES
    ):
        return "image/bmp"
    return None


def content_type_of(data: bytes, declared: str | None) -> str:
    """The sniffed type, else the declared one without parameters, else octet-stream."""
    sniffed = sniff(data)
    if sniffed is not None:
        return sniffed
    if declared:
        base = declared.split(";", 1)[0].strip().lower()
        if base and "/" in base:
            return base
    return "application/octet-stream"
