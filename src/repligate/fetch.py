"""Safe fetching of file inputs (http(s) URLs and data URIs), for the whole server.

Public surface (runners and the execution rely on it):
- ``Fetcher.fetch(value, field=..., owner=None) -> FetchedFile``
- ``Fetcher.download_to(url, path, field=..., max_bytes=None)`` for large files (tarballs)
- ``FetchedFile.image(exif_transpose=True, mode="RGB") -> PIL.Image.Image``
- ``FetchRefused``: a user-caused refusal whose message names the input and the reason.
- ``check_reference(value)``: what can be refused at create time, without any network.
- ``LocalFiles``: what the fetcher is given to read this server's own uploaded files
  straight from storage (``file_inputs.FileInputs``): such a URL is never fetched over HTTP,
  so it is neither a round trip to the server itself nor refused as a loopback address.

A URL fetch: at most ``max_redirects`` redirects, followed by hand so each hop is checked
again (scheme, host, every resolved address); connections pinned to the checked addresses
(netguard.PinnedTransport); at most ``max_bytes`` (refused by Content-Length up front, else
as soon as the cap is passed); one wall-clock deadline for the whole fetch, DNS included.
"""

from __future__ import annotations

import io
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import httpcore
import httpx

from repligate import datauri, netguard
from repligate.errors import PredictionFailure
from repligate.netguard import AddressPolicy, TimeUp
from repligate.sniff import content_type_of

if TYPE_CHECKING:
    import ssl

    from PIL.Image import Image

    from repligate.settings import Settings

_SCHEMES = ("http", "https", "data")
_SCHEME_REASON = "must be an http(s) URL or a data: URI"
# Formats decoded from untrusted bytes. Not all Pillow knows: some plugins hand the data
# to external programs (EPS runs Ghostscript) or are rarely exercised parsers. No "MPO":
# Pillow 13 opens MPO files through its JPEG plugin and knows no such name, and naming
# it made every format listed after it fail to open (KeyError).
_IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
_CHUNK = 64 * 1024
_USER_AGENT = "repligate (file input fetcher)"


class FetchRefused(PredictionFailure):
    """A file input could not be used; the message names the input and why."""


class _Bad(Exception):
    """A reason, without the field name (added by whoever reports it)."""


class LocalFileRefused(Exception):
    """A URL names this server's own file, which cannot be used; the message says why."""


@dataclass(frozen=True)
class LocalFile:
    stream: BinaryIO
    content_type: str
    size: int


class LocalFiles(Protocol):
    def open(self, url: str, *, owner: str | None) -> LocalFile | None:
        """The server's own file that ``url`` names, open, or None if it names none;
        LocalFileRefused if it does but the file cannot be used (gone, or not ``owner``'s;
        ``owner`` None: ownership was checked before)."""
        ...


@dataclass(frozen=True)
class FetchedFile:
    field: str
    data: bytes
    content_type: str
    max_pixels: int = 64_000_000

    def image(self, *, exif_transpose: bool = True, mode: str | None = "RGB") -> Image:
        """Decode as an image, refusing more than ``max_pixels`` before decoding any pixel.

        The limit is checked here, per call, from the header's declared size; Pillow's
        process-wide MAX_IMAGE_PIXELS is left alone (other code shares it) and still
        refuses anything past twice its value, which is reported the same way.
        """
        from PIL import Image as PILImage
        from PIL import ImageOps

        try:
            with PILImage.open(io.BytesIO(self.data), formats=_IMAGE_FORMATS) as probe:
                width, height = probe.size
                if width * height > self.max_pixels:
                    raise FetchRefused(self._too_many_pixels(f"{width}x{height}"))
                probe.load()
                image = ImageOps.exif_transpose(probe) if exif_transpose else probe.copy()
        except FetchRefused:
            raise
        except PILImage.DecompressionBombError as exc:
            # Pillow refused it at open, before its size could be read here; its message
            # (the only place the size is) quotes Pillow's limit, not this server's.
            declared = str(exc).partition("(")[2].partition(" pixels)")[0]
            size = f"{declared} pixels" if declared.isdigit() else "larger"
            raise FetchRefused(self._too_many_pixels(size)) from exc
        except Exception as exc:
            # Pillow signals bad input with many exception types (OSError, SyntaxError,
            # ValueError, struct.error, ...): any of them means the file, not the server.
            raise FetchRefused(
                f"{self.field}: the file is not an image this server can read "
                f"(it looks like {self.content_type})"
            ) from exc
        return image.convert(mode) if mode and image.mode != mode else image

    def _too_many_pixels(self, size: str) -> str:
        from PIL import Image as PILImage

        reason = (
            f"{self.field}: the image is {size}, more than the limit of {self.max_pixels} "
            "pixels (REPLIGATE_MAX_IMAGE_PIXELS)"
        )
        # Pillow refuses past twice its own process-wide limit, whatever ours says.
        hard = 2 * (PILImage.MAX_IMAGE_PIXELS or 0)
        if hard and self.max_pixels > hard:
            reason += f"; Pillow itself refuses more than {hard} pixels"
        return reason


def check_reference(
    value: str, *, max_bytes: int | None = None, policy: AddressPolicy | None = None
) -> str | None:
    """Why the file input ``value`` is refused, judged without any network, or None.

    Always: the scheme, a URL's shape, a data URI's shape and base64. With ``max_bytes``: a
    data URI's size. With ``policy``: a literal address or metadata host name it refuses.
    """
    try:
        _judge(value, max_bytes, policy)
    except _Bad as exc:
        return str(exc)
    return None


def _judge(
    value: str, max_bytes: int | None, policy: AddressPolicy | None
) -> httpx.URL | tuple[bytes, str]:
    """An http(s) value's parsed URL, or a data URI's bytes and media type; _Bad otherwise."""
    scheme, sep, _ = value.partition(":")
    if not sep or scheme.lower() not in _SCHEMES:
        raise _Bad(_SCHEME_REASON)
    if scheme.lower() == "data":
        try:
            return datauri.decode(value, max_bytes)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    return _parse_url(value, policy)


def _parse_url(value: str, policy: AddressPolicy | None) -> httpx.URL:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _Bad(f"{value[:200]!r} is not a valid URL") from exc
    if url.scheme not in ("http", "https"):
        raise _Bad(f"{_SCHEME_REASON} (got {url.scheme}:)")
    if not url.host:
        raise _Bad("the URL has no host")
    if policy is not None:
        refusal = policy.host_refusal(url.host)
        if refusal is not None:
            raise _Bad(refusal)
    return url


class Fetcher:
    def __init__(
        self,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        timeout: float = 60.0,
        max_redirects: int = 5,
        allow_private: bool = False,
        max_pixels: int = 64_000_000,
        allowed_networks: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        local_files: LocalFiles | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.max_pixels = max_pixels
        self.policy = AddressPolicy(allow_private=allow_private, allowed_networks=allowed_networks)
        self._ssl_context = ssl_context
        self.local_files = local_files
        # Told each refusal's reason (the metrics count them); None: nobody listens.
        self.on_refusal: Callable[[str], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, local_files: LocalFiles | None = None) -> Fetcher:
        return cls(
            local_files=local_files,
            max_bytes=settings.fetch_max_bytes,
            timeout=settings.fetch_timeout_seconds,
            max_redirects=settings.fetch_max_redirects,
            allow_private=settings.fetch_allow_private,
            allowed_networks=settings.fetch_allowed_networks,
            max_pixels=settings.max_image_pixels,
        )

    def fetch(self, value: str, *, field: str, owner: str | None = None) -> FetchedFile:
        """``owner``: the key whose prediction this is (this server's own files must be
        theirs)."""
        try:
            local = self._open_local(value, owner, self.max_bytes)
            if local is not None:
                with local.stream:
                    data, declared = local.stream.read(), local.content_type
                return FetchedFile(field, data, content_type_of(data, declared), self.max_pixels)
            judged = _judge(value, self.max_bytes, self.policy)
            if isinstance(judged, tuple):
                data, declared = judged
            else:
                parts: list[bytes] = []
                declared = self._download(judged, self.max_bytes, parts.append) or ""
                data = b"".join(parts)
        except _Bad as exc:
            self._refused(exc)
            raise FetchRefused(f"{field}: {exc}") from None
        return FetchedFile(field, data, content_type_of(data, declared), self.max_pixels)

    def download_to(
        self,
        url: str,
        path: Path,
        *,
        field: str,
        max_bytes: int | None = None,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> None:
        """Write the file at ``url`` (or a data URI) to ``path``, streamed: never more than
        ``max_bytes`` on disk, within ``timeout`` seconds (defaults: the fetcher's), and
        nothing left behind on refusal."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        partial = path.with_name(path.name + ".part")
        try:
            local = self._open_local(url, owner, limit)
            judged = _judge(url, limit, self.policy) if local is None else None
            with partial.open("wb") as out:
                if local is not None:
                    with local.stream:
                        shutil.copyfileobj(local.stream, out, _CHUNK * 16)
                elif isinstance(judged, tuple):
                    out.write(judged[0])
                elif judged is not None:
                    self._download(judged, limit, out.write, timeout)
            partial.replace(path)
        except _Bad as exc:
            self._refused(exc)
            raise FetchRefused(f"{field}: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)

    def _refused(self, exc: _Bad) -> None:
        if self.on_refusal is not None:
            self.on_refusal(str(exc))

    def _open_local(self, value: str, owner: str | None, limit: int) -> LocalFile | None:
        if self.local_files is None or not value.lower().startswith(("http://", "https://")):
            return None
        try:
            local = self.local_files.open(value, owner=owner)
        except LocalFileRefused as exc:
            raise _Bad(str(exc)) from None
        if local is not None and local.size > limit:
            local.stream.close()
            raise _Bad(f"the file is {local.size} bytes, more than {limit}")
        return local

    def _download(
        self,
        url: httpx.URL,
        limit: int,
        sink: Callable[[bytes], object],
        timeout: float | None = None,
    ) -> str | None:
        """Stream ``url`` into ``sink``; return the server's Content-Type. _Bad on refusal."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        hop = 0
        while True:
            try:
                location = self._hop(url, limit, sink, deadline)
            except _Bad as exc:
                raise _Bad(f"redirected to {url}: {exc}" if hop else str(exc)) from None
            except (TimeUp, httpx.TimeoutException, httpcore.TimeoutException):
                raise _Bad(f"downloading took longer than {timeout:g} seconds") from None
            except httpcore.ConnectError as exc:
                raise _Bad(f"could not connect to {url.host}: {exc}") from None
            except (
                httpx.HTTPError,
                httpcore.NetworkError,
                httpcore.ProtocolError,
                zlib.error,
            ) as exc:
                raise _Bad(f"the download from {url.host} failed: {exc}") from None
            if not isinstance(location, httpx.URL):
                return location
            hop += 1
            if hop > self.max_redirects:
                raise _Bad(f"more than {self.max_redirects} redirects")
            url = _parse_url_redirect(location, self.policy)

    def _hop(
        self, url: httpx.URL, limit: int, sink: Callable[[bytes], object], deadline: float
    ) -> httpx.URL | str | None:
        """One request: the redirect's target URL, or the body streamed and its type."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            # raw_host: the IDNA (ASCII) form, what DNS knows.
            host = url.raw_host.decode("ascii")
            addresses = netguard.resolve(host, port, self.policy, deadline)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
        if self._ssl_context is None:
            # Loading the CA bundle takes a while: once per fetcher (a benign race at worst).
            self._ssl_context = httpx.create_ssl_context()
        transport = netguard.PinnedTransport(addresses, deadline, self._ssl_context)
        # trust_env=False: a proxy from the environment would resolve names itself and
        # bypass the pinning. timeout=None: the transport bounds every socket operation by
        # the deadline instead.
        with (
            httpx.Client(transport=transport, trust_env=False, timeout=None) as client,
            client.stream(
                "GET",
                url,
                headers={"Accept-Encoding": "identity", "User-Agent": _USER_AGENT},
            ) as response,
        ):
            if response.is_redirect:
                try:
                    return url.join(response.headers["location"])
                except (httpx.InvalidURL, ValueError, TypeError) as exc:
                    raise _Bad(f"the server redirected to an invalid URL: {exc}") from None
            if response.status_code != 200:
                raise _Bad(f"the server answered {response.status_code} for {url}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _Bad(f"the server says the file is {declared} bytes, more than {limit}")
            total = 0
            encoding = response.headers.get("content-encoding", "").strip().lower()
            for chunk in _decoded(response.iter_raw(_CHUNK), encoding, limit):
                total += len(chunk)
                if total > limit:
                    raise _Bad(f"the file is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise TimeUp()
                sink(chunk)
            return response.headers.get("content-type")


def _parse_url_redirect(location: httpx.URL, policy: AddressPolicy) -> httpx.URL:
    try:
        return _parse_url(str(location), policy)
    except _Bad as exc:
        raise _Bad(f"redirected to {location}: {exc}") from None


def _decoded(chunks: Iterable[bytes], encoding: str, limit: int) -> Iterator[bytes]:
    """Undo gzip/deflate compression that a server applied although we asked for none,
    never holding more than ``limit`` + 1 decompressed bytes at once (zlib's max_length), so
    a compression bomb stays a refusal. Other encodings pass through as they came."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 47}
    if encoding not in wbits:
        yield from chunks
        return
    inflater = zlib.decompressobj(wbits[encoding])  # 47: zlib or gzip header, autodetected
    for chunk in chunks:
        pending = chunk
        while pending:
            yield inflater.decompress(pending, limit + 1)
            pending = inflater.unconsumed_tail
    yield inflater.flush()
