"""Inputs that name this server's own uploaded files, and large data URIs made into them.

Create time (``prepare``, called by the prediction service): a data-URI file input longer
than ``inline_max`` characters is stored as a file of the caller's key and replaced by
that file's URL, so the row (and every page of ``GET /v1/predictions``) keeps a short URL
and the request's body is not held for the prediction's life. Every input that names one
of this server's files must name a live file of the caller's key, or the prediction is
refused (422, naming the input).

Run time (``open``, the fetcher's ``LocalFiles``): such a URL is read straight from
storage, never over HTTP, and again only for the prediction's own key.

A URL names this server's file when its path is ``[/replicate]/v1/files/<id>[/download]``
(an id of our shape) and either its origin is this server's (the public base URL, or the
one the create request came in on) or the id is in the files table. So a URL the server
gave out works whatever host name it was reached by (a proxy, localhost, a LAN name).
"""

from __future__ import annotations

import io
import mimetypes
import re
from typing import Any
from urllib.parse import urlsplit

from repligate import datauri
from repligate.errors import InvalidField, InvalidInput, NotFound
from repligate.fetch import LocalFile, LocalFileRefused
from repligate.models.spec import ModelSpec
from repligate.records import ApiKey, UploadedFile
from repligate.sniff import content_type_of
from repligate.uploads import UploadService

_PATH = re.compile(r"^(?:/replicate)?/v1/files/(?P<id>[a-z2-7]{26})(?:/download)?/?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL, normalised; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _DEFAULT_PORTS[scheme]}"


def _named_file(url: str) -> tuple[str, str] | None:
    """(origin, file id) when ``url`` has the shape of this server's file URLs."""
    origin = _origin(url)
    if origin is None:
        return None
    match = _PATH.match(urlsplit(url).path)
    return (origin, match.group("id")) if match else None


class FileInputs:
    def __init__(
        self, uploads: UploadService, *, inline_max: int, public_base_url: str | None = None
    ) -> None:
        self.uploads = uploads
        self.inline_max = inline_max
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        public = _origin(public_base_url) if public_base_url else None
        self._own_origins: set[str | None] = {public} if public else set()

    def prepare(
        self,
        key: ApiKey,
        spec: ModelSpec,
        raw_input: dict[str, Any],
        *,
        api_base_url: str | None = None,
    ) -> dict[str, Any]:
        """``raw_input`` (already validated) as the row keeps it. ``api_base_url``: where
        the caller reached the API (``http://host`` or ``http://host/replicate``)."""
        base = (api_base_url or self._public_base_url or "").rstrip("/")
        origins = self._own_origins | ({_origin(base)} if base else set())
        properties = spec.schemas["Input"]["properties"]
        prepared = dict(raw_input)
        problems = []
        for name, value in raw_input.items():
            if not isinstance(value, str):
                continue
            is_file = properties.get(name, {}).get("format") == "uri"
            if is_file and base and len(value) > self.inline_max and value[:5].lower() == "data:":
                prepared[name] = self._store_data_uri(key, name, value, base)
                continue
            try:
                self._resolve(value, key.id, origins)
            except LocalFileRefused as refused:
                problems.append(InvalidField("format", f"input.{name}", str(refused)))
        if problems:
            raise InvalidInput(problems)
        return prepared

    def open(self, url: str, *, owner: str | None) -> LocalFile | None:
        uploaded = self._resolve(url, owner, self._own_origins)
        if uploaded is None:
            return None
        try:
            stream = self.uploads.open(uploaded)
        except NotFound:
            raise LocalFileRefused(f"file {uploaded.id} is no longer available") from None
        return LocalFile(stream, uploaded.content_type, uploaded.size)

    def _resolve(
        self, value: str, owner: str | None, origins: set[str | None]
    ) -> UploadedFile | None:
        """The live file of ``owner`` that ``value`` names; None when it names none of
        this server's files. ``LocalFileRefused`` says why a file it names is unusable."""
        named = _named_file(value)
        if named is None:
            return None
        origin, file_id = named
        uploaded = self.uploads.find(file_id)
        if uploaded is None:
            # Someone else's URL that merely looks like ours is left to the fetcher.
            if origin in origins:
                raise LocalFileRefused(_not_yours(file_id))
            return None
        reason = self._unusable(uploaded, owner)
        if reason is not None:
            raise LocalFileRefused(reason)
        return uploaded

    def _unusable(self, uploaded: UploadedFile, owner: str | None) -> str | None:
        if owner is not None and uploaded.api_key_id != owner:
            return _not_yours(uploaded.id)
        if uploaded.deleted_at is not None:
            return f"file {uploaded.id} was deleted"
        if uploaded.gone(self.uploads.clock.now()):
            return f"file {uploaded.id} expired at {uploaded.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        return None

    def _store_data_uri(self, key: ApiKey, field: str, value: str, base: str) -> str:
        data, declared = datauri.decode(value)
        content_type = content_type_of(data, declared)
        extension = mimetypes.guess_extension(content_type) or ""
        uploaded = self.uploads.create(
            key, io.BytesIO(data), name=f"{field}{extension}", content_type=content_type
        )
        return f"{base}/v1/files/{uploaded.id}"


def _not_yours(file_id: str) -> str:
    return (
        f"file {file_id} is not one of this API key's files (an uploaded file can be used "
        "only with the key that uploaded it)"
    )
