"""Shared fixtures: tiny random weights (built once), a fresh server per test, keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.settings import Settings
from repligate.store import keys

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
    from repligate.testing.tiny_weights import build_all

    root = tmp_path_factory.mktemp("tiny-weights")
    build_all(root)
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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the data dir), then a fresh PostgreSQL database (skipped, saying
    why, when none answers)."""
    if request.param == "sqlite":
        yield None
        return
    from tests.test_store import temporary_postgres_url

    yield from temporary_postgres_url()
