"""moto's S3 server over real HTTP on a loopback port, with one bucket, for the tests of
``REPLIGATE_STORAGE=s3``; skipped with the reason when moto cannot start. Import the
``s3_endpoint`` fixture into a test module to use it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

BUCKET = "repligate-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with one bucket; AWS credentials for it
    in the environment, as an operator's would be (boto3's default chain reads them).
    Also the scaled test stack's S3, for a whole session (tests/scaled_stack.py)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as missing:
        pytest.skip(f"moto[server] is not installed ({missing}): no S3 to test against")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        try:
            server.start()
        except Exception as failure:  # any failure to start means: no S3 here
            pytest.skip(f"moto's S3 server could not start: {failure!r}")
        endpoint = f"http://127.0.0.1:{port}"
        try:
            s3_client(endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint
        finally:
            server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def keys(endpoint: str, prefix: str) -> list[str]:
    listed = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def s3_object(endpoint: str, key: str) -> tuple[bytes, str]:
    found = s3_client(endpoint).get_object(Bucket=BUCKET, Key=key)
    return found["Body"].read(), found["ContentType"]
