"""An app wired with the fakes of ``repligate.testing.fakes``: a scripted provider instead
of models, a queue the test drives, a clock it sets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from repligate.app import Container, build_container, create_app
from repligate.bus import PredictionEvent
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.testing.fakes import FakeClock, ManualQueue, ScriptedProvider
from tests.conftest import make_token

SD = "stability-ai/stable-diffusion"
ANIMATION = "andreasjansson/stable-diffusion-animation"
ANIMATION_INPUT = {"prompt_start": "a seed", "prompt_end": "a tree"}


@dataclass
class FakeApp:
    client: TestClient
    container: Container
    provider: ScriptedProvider
    clock: FakeClock
    auth: dict[str, str]
    events: list[PredictionEvent]

    @property
    def queue(self) -> ManualQueue:
        assert isinstance(self.container.queue, ManualQueue)
        return self.container.queue

    def create(self, model: str = SD, body: dict[str, Any] | None = None, **headers: str) -> Any:
        payload = body if body is not None else {"input": {"prompt": "a fox"}}
        return self.client.post(
            f"/v1/models/{model}/predictions", json=payload, headers={**self.auth, **headers}
        )

    def get(self, prediction_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/predictions/{prediction_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def cancel(self, prediction_id: str) -> dict[str, Any]:
        response = self.client.post(f"/v1/predictions/{prediction_id}/cancel", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def kinds(self, prediction_id: str) -> list[str]:
        return [e.kind.value for e in self.events if e.prediction.id == prediction_id]


@contextmanager
def fake_app(
    settings: Settings,
    provider: ScriptedProvider,
    *,
    inline: bool = False,
    storage: Storage | None = None,
    **changes: Any,
) -> Iterator[FakeApp]:
    settings = settings.model_copy(update=changes)
    clock = FakeClock()
    container = build_container(
        settings,
        provider=provider,
        queue=ManualQueue.factory(inline=inline),
        clock=clock,
        storage=storage,
    )
    events: list[PredictionEvent] = []
    container.bus.subscribe(events.append)
    with TestClient(create_app(settings, container)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        yield FakeApp(client, container, provider, clock, auth, events)
