"""Shared fixtures: tiny random weights (built once), a fresh server per test, keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.settings import Settings
from repligate.store import keys
from tests.scaled_stack import (
    BROKER_URL,
    STACKS,
    ScaledStack,
    environment,
    lazily_worked_queue,
    scaled_stack,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SD_VERSION = "ac732df83cea7fff18b8472768c88ad041fa750ff7682a21affe81863cbe77e4"
SD_REF = f"stability-ai/stable-diffusion:{SD_VERSION}"
# Small and quick: the tiny pipeline at 64x64 with 2 steps takes well under a second.
FAST_SD_INPUT = {
    "prompt": "a red fox",
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "scheduler": "K_EULER",
}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per version of the builders and kept beside pytest's temporary
    folders, so `make test`'s second run (the scaled stack) and the next session reuse
    them; a build is published by one rename, so a half-written one is never used."""
    import hashlib
    import shutil

    import repligate.testing
    from repligate.testing.tiny_weights import build_all

    sources = sorted(Path(repligate.testing.__file__).parent.glob("tiny_*.py"))
    version = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    root = tmp_path_factory.getbasetemp().parent / f"repligate-tiny-weights-{version}"
    if not root.is_dir():
        building = tmp_path_factory.mktemp("tiny-weights")
        build_all(building)
        try:
            building.rename(root)
        except OSError:  # another run published it meanwhile
            shutil.rmtree(building, ignore_errors=True)
    return root


@pytest.fixture(scope="session")
def fixed_torch_threads() -> int:
    """torch's own default count. The server's automatic count follows the machine's load,
    and float sums over another number of threads can differ in the last bits, so tests
    that compare pixels of two runs (or with a direct diffusers call) fix it; the
    automatic policy has its own tests (test_threads.py)."""
    import torch

    return torch.get_num_threads()


@pytest.fixture
def settings(tmp_path: Path, tiny_weights: Path, fixed_torch_threads: int) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        torch_threads=fixed_torch_threads,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def make_token(client: TestClient, name: str = "test") -> str:
    sessions = client.app.state.container.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        _, token = keys.create(session, name=name)
    return token


@pytest.fixture
def token(client: TestClient) -> str:
    return make_token(client)


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def official_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by ``replicate.Client()`` when it is made: poll quickly, and never fall back to
    a token or a host from the environment of whoever runs the tests."""
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    monkeypatch.delenv("REPLICATE_BASE_URL", raising=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the data dir), then a fresh PostgreSQL database (skipped, saying
    why, when none answers)."""
    if request.param == "sqlite":
        yield None
        return
    from tests.test_store import temporary_postgres_url

    yield from temporary_postgres_url()


# The scaled-out stack (issue 22: "the API suite passes unchanged on PostgreSQL + Celery +
# S3"). REPLIGATE_TEST_STACK=scaled runs the same tests with every app on PostgreSQL, S3
# and the Redis event bus; unset (or "embedded"), nothing here does anything. The changes
# reach the apps as REPLIGATE_* environment, as an operator sets them, so the tests'
# own ``Settings(...)`` (local ``settings`` fixtures, module-scoped live servers, CLI
# runs) get them too, while a test that sets a field itself keeps its value.
TEST_STACK = os.environ.get("REPLIGATE_TEST_STACK", "embedded")
SCALED = TEST_STACK == "scaled"

# Tests that look at the embedded stack's insides rather than at what a user sees: they
# are skipped in the scaled run, each with its reason. Keys are node ids ("file::test"
# covers all of its parameters) or whole files.
_LOCAL_UPLOADS = "counts the uploaded files under data_dir/files (on S3: test_s3_storage.py)"
SCALED_EXCLUDE: dict[str, str] = {
    "tests/test_api_files.py::test_get_list_download_and_delete": _LOCAL_UPLOADS,
    "tests/test_api_files.py::test_a_file_over_the_cap_is_refused_with_413": _LOCAL_UPLOADS,
    "tests/test_api_files.py::test_expired_files_bytes_are_swept_at_the_next_upload": (
        _LOCAL_UPLOADS
    ),
    "tests/test_api_files.py::test_an_upload_is_not_served_by_the_public_output_route": (
        "takes the upload's path under data_dir/files to build its output URL"
    ),
    # For time alone: about a minute of a 2-core machine, on the same stack paths as
    # the 64x64 runs of the same file.
    "tests/test_api_predictions.py::test_seed_curl_body_answers_with_a_768_png": (
        "a 768x768, 50-step run: only slower than the 64x64 ones, no other stack path"
    ),
    "tests/test_streams.py::test_many_open_streams_cost_no_thread_each": (
        "counts threads: PostgreSQL's round trips keep more of asyncio's default executor "
        "(bounded: min(32, cores + 4)) busy while 200 streams open than SQLite's do; "
        "still no thread per stream"
    ),
}


def scaled_settings_changes(stack: ScaledStack, database_url: str, scope: str) -> dict[str, object]:
    """THE place that says what a scaled run changes, for one module or one test
    (``scope``: a fresh name): PostgreSQL, S3, the Redis bus, and the Celery queue on
    Redis, whose worker each app starts at its first prediction (``scaled_services``)."""
    return {
        "database_url": database_url,
        "storage": "s3",
        "s3_bucket": stack.s3_bucket,
        "s3_prefix": f"{scope}/",
        "s3_endpoint_url": stack.s3_endpoint_url,
        "event_bus_url": stack.redis_url,
        "event_bus_channel": f"repligate-test:{scope}",
        "queue": "celery",
        "broker_url": BROKER_URL,
        "celery_queue_prefix": f"repligate-test-{scope}",
    }


def pytest_configure(config: pytest.Config) -> None:
    if TEST_STACK not in STACKS:
        raise pytest.UsageError(f"REPLIGATE_TEST_STACK is one of {STACKS}, not {TEST_STACK!r}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SCALED:
        return
    for item in items:
        for node, reason in SCALED_EXCLUDE.items():
            if item.nodeid == node or item.nodeid.startswith((f"{node}[", f"{node}::")):
                item.add_marker(pytest.mark.skip(reason=f"embedded stack only: {reason}"))


@pytest.fixture(scope="session")
def scaled_services() -> Iterator[ScaledStack | None]:
    if not SCALED:
        yield None
        return
    with scaled_stack() as stack, pytest.MonkeyPatch.context() as patch:
        # Every app's queue is Celery's, and its worker runs in a thread here.
        patch.setattr("repligate.backends.queue", lazily_worked_queue)
        yield stack


@contextmanager
def _scaled_environment(stack: ScaledStack | None) -> Iterator[dict[str, object]]:
    if stack is None:
        yield {}
        return
    scope = f"t{uuid.uuid4().hex[:12]}"
    with stack.database() as database_url, pytest.MonkeyPatch.context() as env:
        changes = scaled_settings_changes(stack, database_url, scope)
        for name, value in environment(changes).items():
            env.setenv(name, value)
        yield changes


@pytest.fixture(scope="module", autouse=True)
def scaled_module(scaled_services: ScaledStack | None) -> Iterator[dict[str, object]]:
    """What module-scoped apps (live servers) are built on in a scaled run."""
    with _scaled_environment(scaled_services) as changes:
        yield changes


@pytest.fixture(autouse=True)
def scaled_test(
    scaled_module: dict[str, object], scaled_services: ScaledStack | None
) -> Iterator[dict[str, object]]:
    """Each test's own database, key prefix and bus channel in a scaled run: no test
    hears another's events or recovers another's predictions at its app's start."""
    with _scaled_environment(scaled_services) as changes:
        yield changes
