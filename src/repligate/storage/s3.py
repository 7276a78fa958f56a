"""Objects in an S3 bucket (AWS, or any S3-compatible store: MinIO, R2, ... through
``endpoint_url``), under an optional key prefix. Credentials and region come from boto3's
usual chain (environment, ``~/.aws``, instance roles); nothing here reads them.

boto3 is imported only when this backend is built, so a server on local storage (the
default) or a relay-only one never loads it.

Clients download outputs from one of two places:
- proxied (the default): the same ``/files/<key>`` URLs as local storage; the API reads
  the object and streams it on (``api/files.py``);
- ``public_base_url``: a public bucket (or a CDN in front of it); an output's URL is that
  base followed by the object's full key.

No presigned URLs: the official client sends its bearer token to whatever host an output
URL names, and S3 refuses a presigned request that also carries an Authorization header.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast
from urllib.parse import quote

from repligate.errors import StorageUnavailable
from repligate.storage.base import Readable, reference

# Part size for streamed uploads (multipart above it); S3's minimum part is 5 MiB.
_PART_BYTES = 8 * 1024 * 1024


class S3Object(io.RawIOBase):
    """An object's body, open for reading, with its ``size`` known from the response
    (so ``/files/`` can send Content-Length without buffering the object)."""

    def __init__(self, body: Any, size: int | None) -> None:
        self._body = body
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk: bytes = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@contextmanager
def _answered(action: str) -> Iterator[None]:
    """S3 not reachable, or refusing (no bucket, no rights): a clear 503, not a bare 500."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as failure:
        # Not the key in the message: an upload's key holds its secret part.
        raise StorageUnavailable(f"storage could not {action} an object: {failure}") from failure


class S3Storage:
    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        public_base_url: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        # "outputs" and "outputs/" both mean the folder outputs/.
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    @classmethod
    def connect(
        cls,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_base_url: str | None = None,
    ) -> S3Storage:
        """A storage on a boto3 client built from the usual AWS settings."""
        import boto3  # lazily: only servers that store in S3 load it
        from botocore.config import Config

        # Path-style addressing: S3-compatible stores on a plain host (MinIO, moto, a
        # private endpoint) rarely answer on bucket subdomains. Short connect timeout: a
        # store that is down answers 503 in seconds rather than holding requests a minute.
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        return cls(client, bucket, prefix=prefix, public_base_url=public_base_url)

    def object_key(self, key: str) -> str:
        """The object's key in the bucket: the prefix, then the storage key."""
        return self.prefix + key

    def put(self, key: str, data: bytes, content_type: str) -> str:
        with _answered("write"):
            self.client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type
            )
        return reference(key)

    def put_file(self, key: str, source: Readable, content_type: str) -> str:
        from boto3.s3.transfer import TransferConfig

        # Streamed in parts: an upload is never held whole in memory.
        with _answered("write"):
            self.client.upload_fileobj(
                source,
                self.bucket,
                self.object_key(key),
                ExtraArgs={"ContentType": content_type},
                Config=TransferConfig(
                    multipart_threshold=_PART_BYTES, multipart_chunksize=_PART_BYTES
                ),
            )
        return reference(key)

    def open(self, key: str) -> BinaryIO:
        with _answered("read"):
            try:
                found = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(key) from None
        return cast(BinaryIO, S3Object(found["Body"], found.get("ContentLength")))

    def delete(self, key: str) -> None:
        # S3 answers a delete of a missing object with success, as the interface wants.
        with _answered("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def url(self, key: str, base_url: str) -> str:
        if self.public_base_url is not None:
            return f"{self.public_base_url}/{quote(self.object_key(key))}"
        return f"{base_url.rstrip('/')}/files/{key}"
