"""The scaled-out stack the API suite also runs on (``REPLIGATE_TEST_STACK=scaled``):
PostgreSQL, S3 (moto's server over real HTTP) and the Redis event bus, on the services of
this machine. conftest.py starts it once per session and gives every module and every test
a database, a key prefix and a bus channel of its own; this module only knows how to start
and reach the services, skipping (saying which service) when one is absent."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from repligate.settings import Settings
from repligate.store import db, migrate
from tests.s3_server import BUCKET, moto_s3
from tests.services import redis_or_skip
from tests.test_store import POSTGRES_ADMIN_URL

REDIS_URL = "redis://127.0.0.1:6379/0"
# The Celery broker: another Redis database than the bus's.
BROKER_URL = "redis://127.0.0.1:6379/2"
STACKS = ("embedded", "scaled")


@dataclass(frozen=True)
class ScaledStack:
    template: str  # a migrated PostgreSQL database each test's database is copied from
    s3_endpoint_url: str
    s3_bucket: str
    redis_url: str

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, migrated database (a copy of the template, which is much quicker than
        migrating each one), dropped afterwards even if something still holds it."""
        name = f"repligate_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
            yield _url_of(name)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def _url_of(database: str) -> str:
    return make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(False)


@contextmanager
def _template_database() -> Iterator[str]:
    name = f"repligate_template_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # no server, no driver, no permission: say so and skip
        pytest.skip(f"scaled test stack: PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {error}")
    try:
        engine = db.make_engine(_url_of(name))
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()  # a template may have no open connection while it is copied
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def scaled_stack() -> Iterator[ScaledStack]:
    """Checks Redis, migrates a template database and starts moto's S3 server (with AWS
    credentials for it in the environment) for as long as the context lasts."""
    with ExitStack() as stack:
        redis_url = redis_or_skip(REDIS_URL, "scaled test stack")
        template = stack.enter_context(_template_database())
        endpoint = stack.enter_context(moto_s3())
        try:
            yield ScaledStack(template, endpoint, BUCKET, redis_url)
        finally:
            # Every test's queues were "repligate-test-<scope>.<owner>.<name>".
            from tests.celery_workers import forget_queues

            forget_queues(BROKER_URL, "repligate-test-")


def environment(changes: dict[str, object]) -> dict[str, str]:
    """Settings changes as the REPLIGATE_* variables an operator would set: every
    ``Settings(...)`` a test builds reads them, its explicit arguments still win."""
    return {f"REPLIGATE_{name.upper()}": str(value) for name, value in changes.items()}


class WorkerThread:
    """The Celery worker of one app in a scaled run, in a thread of this process from the
    app's first submit until the app stops. Its tasks run the app's own executor, so the
    fakes a test wires (a scripted provider, in-memory storage) run as they would
    in-process; ``repligate worker`` processes have their own tests
    (test_celery_queue.py, test_scaleout_processes.py)."""

    def __init__(self, settings: Settings, execute: Callable[[str], None]) -> None:
        self._settings = settings
        self._execute = execute
        self._lock = threading.Lock()
        self._queues: list[str] = []
        self._controller: Any = None
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            from celery.contrib.testing.worker import TestWorkController

            from repligate.models import all_models
            from repligate.queue.celery_app import make_celery, queue_names
            from repligate.worker import EXECUTORS

            prefix = self._settings.celery_queue_prefix
            self._queues = queue_names(prefix, [spec.ref for spec in all_models()])
            for queue in self._queues:
                EXECUTORS[queue] = self._execute
            celery = make_celery(self._settings)
            celery.finalize()
            self._controller = TestWorkController(
                app=celery,
                queues=self._queues,
                pool="threads",
                concurrency=self._settings.concurrency_per_device,
                hostname=f"scaled-test-{uuid.uuid4().hex[:8]}@localhost",
                loglevel="WARNING",
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
            )
            self._thread = threading.Thread(
                target=self._controller.start, name="scaled-celery-worker", daemon=True
            )
            self._thread.start()
            self._controller.ensure_started()

    def stop(self) -> None:
        from celery.worker import state

        from repligate.worker import EXECUTORS

        with self._lock:
            if self._thread is not None:
                # As Celery's own test worker stops: a warm shutdown every worker thread
                # of this process takes (another app's restarts at its next submit).
                state.should_terminate = 0
                self._thread.join(30)
                state.should_terminate = None
            if self._controller is not None:
                self._controller.app.close()
            for queue in self._queues:
                EXECUTORS.pop(queue, None)
            self._controller = self._thread = None


def lazily_worked_queue(settings: Settings, execute: Callable[[str], None], flags: Any) -> Any:
    """``backends.queue`` in a scaled run: the Celery queue, whose first submit starts
    the app's worker (``WorkerThread``); the app's stop stops it."""
    from repligate.queue.celery_queue import CeleryQueue

    class Worked(CeleryQueue):
        def submit(self, prediction_id: str, model: str = "") -> None:
            worker.ensure_started()
            super().submit(prediction_id, model)

        def stop(self) -> None:
            worker.stop()
            super().stop()

    worker = WorkerThread(settings, execute)
    return Worked.from_settings(settings, flags)
