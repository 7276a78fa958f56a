"""Signed links to a prediction's web page (``urls.web``).

The page shows a prediction's inputs, so its id alone must not open it: output URLs carry
the id, and they travel further than the API answers do. An API answer (only the owner
sees one) carries ``/p/<id>?expires=<unix seconds>&sig=<HMAC-SHA256>``, signed with the
server's secret; a page request is shown only when the signature holds and the time has
not passed.

The secret is ``REPLIGATE_SECRET_KEY`` or, unset, 32 random bytes generated once into
``<data_dir>/secret`` (mode 0600) when the app is wired. Several API processes on one
database need the same secret: set the variable, or share the data dir.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from enum import Enum
from pathlib import Path
from urllib.parse import quote

from repligate.settings import Settings

log = logging.getLogger(__name__)

SECRET_FILE = "secret"
# Keeps a page signature from passing for any other use of the same secret.
_PURPOSE = b"repligate-web-page"
# Unix seconds, ASCII digits only; a bounded length keeps int() cheap.
_EXPIRES = re.compile(r"[0-9]{1,12}")


class LinkCheck(Enum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"  # missing, malformed or forged


class WebLinks:
    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _signature(self, prediction_id: str, expires: int) -> str:
        message = b"\n".join((_PURPOSE, prediction_id.encode(), str(expires).encode()))
        # The one-shot form: every API answer signs a link, and it is several times
        # quicker than building an HMAC object.
        digest = hmac.digest(self._secret, message, hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def signed_url(self, base_url: str, prediction_id: str, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        signature = self._signature(prediction_id, expires)
        path = quote(prediction_id, safe="")
        return f"{base_url}/p/{path}?expires={expires}&sig={signature}"

    def signed_query(self, prediction_id: str, now: float | None = None) -> str:
        """``expires=...&sig=...`` for the prediction: what its signed web link carries,
        also accepted by its stream (``urls.stream``), which shows no more than the page."""
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        return f"expires={expires}&sig={self._signature(prediction_id, expires)}"

    def check(
        self,
        prediction_id: str,
        expires: str | None,
        signature: str | None,
        now: float | None = None,
    ) -> LinkCheck:
        if not expires or not signature or not _EXPIRES.fullmatch(expires):
            return LinkCheck.INVALID
        expected = self._signature(prediction_id, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return LinkCheck.INVALID
        if int(expires) < (now if now is not None else time.time()):
            return LinkCheck.EXPIRED
        return LinkCheck.VALID


def load_secret(settings: Settings) -> bytes:
    """The configured secret, else the one in ``<data_dir>/secret`` (made on first use)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); chmod 600 it", path, mode)
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds no usable secret; delete it to make a new one")
    return secret


def _create_secret(path: Path) -> None:
    """Write a new secret without ever exposing a partial file, and without replacing one
    another process wrote first (it wins; both then read the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
