"""The services ``bench/scaled.py`` runs the README's deployment on: a PostgreSQL database
made and dropped, moto's S3 server, and the broker queues cleaned up afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator

import api

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER_URL = "redis://127.0.0.1:6379/1"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped (connections and all) afterwards."""
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"repligate_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def s3_values(notes: list[str]) -> Iterator[dict[str, str] | None]:
    """moto's S3 server on a loopback port with one bucket (the guide's S3 settings), or
    None when moto is not installed (the deployment then keeps files locally)."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as missing:
        notes.append(f"no moto ({missing}): the deployment kept files locally, not on S3")
        yield None
        return
    # The processes inherit this environment, as a host's would hold AWS credentials.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    port = api.free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="repligate-bench")
        yield {"S3_BUCKET": "repligate-bench", "S3_ENDPOINT_URL": endpoint}
    finally:
        server.stop()


def delete_broker_queues(prefix: str) -> None:
    """The tasks the timed creates left on the broker (one list per model, and kombu's
    bookkeeping for it)."""
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
