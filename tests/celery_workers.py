"""Real ``repligate worker`` processes for the Celery tests: started as an operator starts
them (the CLI, settings in the environment), on PostgreSQL and a real broker, and never
left behind. Skips, saying why, when PostgreSQL or the broker does not answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repligate.settings import Settings

SRC = Path(__file__).resolve().parent.parent / "src"
REDIS_BROKER = "redis://127.0.0.1:6379/3"
RABBIT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, wait: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@dataclass
class Stack:
    """The settings every process of one test shares, and its worker processes."""

    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, *args: str, **env: str) -> WorkerProcess:
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "repligate.cli", "worker", *args],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = WorkerProcess(process, log_path)
        self.workers.append(started)
        deadline = time.monotonic() + 120
        while "ready." not in started.log():  # Celery's line once it consumes
            if process.poll() is not None or time.monotonic() > deadline:
                started.stop(signal.SIGKILL)
                raise AssertionError(f"the worker did not start:\n{started.log()}")
            time.sleep(0.2)
        return started

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(signal.SIGKILL, wait=10)
        forget_queues(self.env["REPLIGATE_BROKER_URL"], self.env["REPLIGATE_CELERY_QUEUE_PREFIX"])


def forget_queues(broker_url: str, prefix: str) -> None:
    """Remove the queues (and their bindings) a test made on the shared broker, so test
    runs leave nothing behind on it."""
    from repligate.models import all_models
    from repligate.queue.celery_app import queue_names

    names = queue_names(prefix, [spec.ref for spec in all_models()])
    try:
        if broker_url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(broker_url, socket_connect_timeout=2)
            keys = [k for k in client.scan_iter(match=f"*{prefix}*")]
            if keys:
                client.delete(*keys)
            client.close()
        else:
            from kombu import Connection

            with Connection(broker_url, connect_timeout=2) as connection:
                channel = connection.channel()
                for name in names:
                    channel.queue_delete(name)
    except Exception:  # best effort: a broker that went away keeps its leftovers
        pass


def stack_env(
    settings: Settings, database_url: str, broker_url: str, **extra: str
) -> dict[str, str]:
    """The environment of every process of one deployment: its own queue names and event
    channel, so tests sharing a broker never hear each other."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "REPLIGATE_DATA_DIR": str(settings.data_dir),
        "REPLIGATE_WEIGHTS_DIR": str(settings.weights_dir),
        "REPLIGATE_DATABASE_URL": database_url,
        "REPLIGATE_QUEUE": "celery",
        "REPLIGATE_BROKER_URL": broker_url,
        "REPLIGATE_CELERY_QUEUE_PREFIX": f"test-{tag}",
        "REPLIGATE_EVENT_BUS_URL": "redis://127.0.0.1:6379/4",
        "REPLIGATE_EVENT_BUS_CHANNEL": f"test-{tag}",
        "REPLIGATE_LOG_FLUSH_INTERVAL": "0",
        "REPLIGATE_TORCH_THREADS": "1",
        "REPLIGATE_LEASE_SECONDS": "10",
    }
    env.update(extra)
    return env


def settings_of(settings: Settings, env: dict[str, str]) -> Settings:
    """The API side (this test process) with the same settings as the workers."""
    fields = {
        "database_url": env["REPLIGATE_DATABASE_URL"],
        "queue": "celery",
        "broker_url": env["REPLIGATE_BROKER_URL"],
        "celery_queue_prefix": env["REPLIGATE_CELERY_QUEUE_PREFIX"],
        "event_bus_url": env["REPLIGATE_EVENT_BUS_URL"],
        "event_bus_channel": env["REPLIGATE_EVENT_BUS_CHANNEL"],
        "lease_seconds": float(env["REPLIGATE_LEASE_SECONDS"]),
        "max_attempts": int(env.get("REPLIGATE_MAX_ATTEMPTS", "2")),
    }
    return settings.model_copy(update=fields)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    from tests.test_store import temporary_postgres_url

    yield from temporary_postgres_url()
