"""The service on its own, wired with the fakes: create, cancel, wait and recover, with
no model, no worker thread and no clock of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from repligate.app import Container, build_container
from repligate.errors import ModelUnavailable
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.records import ApiKey
from repligate.settings import Settings
from repligate.store import keys, migrate
from repligate.testing.fakes import Gate, ManualQueue, ScriptedProvider

SD_INPUT = {"prompt": "a fox"}


@dataclass
class Wired:
    container: Container
    provider: ScriptedProvider
    key: ApiKey

    @property
    def queue(self) -> ManualQueue:
        assert isinstance(self.container.queue, ManualQueue)
        return self.container.queue


@pytest.fixture
def wired(settings: Settings) -> Iterator[Wired]:
    provider = ScriptedProvider(returns="done")
    container = build_container(settings, provider=provider, queue=ManualQueue.factory())
    migrate.upgrade(container.engine)
    with container.sessions() as session:
        key, _ = keys.create(session, name="k")
    yield Wired(container, provider, key)
    container.engine.dispose()


def sd(wired: Wired) -> ModelSpec:
    return wired.container.service.registry.model("stability-ai", "stable-diffusion")


def test_create_queues_and_the_worker_finishes_it(wired: Wired) -> None:
    service = wired.container.service
    created = service.create(wired.key, sd(wired), SD_INPUT)
    assert created.status is Status.STARTING and wired.queue.pending == [created.id]
    wired.queue.run_all()
    done = service.get(wired.key, created.id)
    assert done.status is Status.SUCCEEDED and done.output == "done"
    assert wired.provider.runs[0][1]["prompt"] == "a fox"
    # Defaults are filled for the runner, not in the stored input (Replicate echoes it).
    assert wired.provider.runs[0][1]["num_inference_steps"] == 50
    assert done.input == SD_INPUT


def test_a_refused_model_makes_no_row(wired: Wired) -> None:
    wired.provider.refuse["stability-ai/stable-diffusion"] = "no GPU here"
    with pytest.raises(ModelUnavailable, match="no GPU here"):
        wired.container.service.create(wired.key, sd(wired), SD_INPUT)
    assert wired.queue.pending == []
    assert wired.container.service.run_count(sd(wired)) == 0


def test_a_prediction_canceled_in_the_queue_never_runs(wired: Wired) -> None:
    service = wired.container.service
    created = service.create(wired.key, sd(wired), SD_INPUT)
    assert service.cancel(wired.key, created.id).status is Status.CANCELED
    wired.queue.run_all()
    assert wired.provider.runs == []
    after = service.get(wired.key, created.id)
    assert after.status is Status.CANCELED and after.started_at is None
    assert after.predict_time is None and after.total_time is not None


def test_wait_returns_when_the_completed_event_arrives(wired: Wired) -> None:
    gate = Gate()
    wired.provider.script = [gate]
    service = wired.container.service
    created = service.create(wired.key, sd(wired), SD_INPUT)
    worker = threading.Thread(target=wired.queue.run_next)
    worker.start()
    assert gate.reached.wait(30)

    async def wait_while_it_finishes() -> Status:
        waiting = asyncio.create_task(service.wait(wired.key, created, 60))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gate.open()
        return (await waiting).status

    assert asyncio.run(wait_while_it_finishes()) is Status.SUCCEEDED
    worker.join(30)


def test_wait_gives_up_after_its_seconds(wired: Wired) -> None:
    service = wired.container.service
    created = service.create(wired.key, sd(wired), SD_INPUT)
    seen = asyncio.run(service.wait(wired.key, created, 0.1))
    assert seen.status is Status.STARTING


def test_recover_requeues_starting_and_leaves_leased_runs_alone(wired: Wired) -> None:
    gate = Gate()
    wired.provider.script = [gate]
    service = wired.container.service
    running = service.create(wired.key, sd(wired), SD_INPUT)
    waiting = service.create(wired.key, sd(wired), SD_INPUT)
    worker = threading.Thread(target=wired.queue.run_next)
    worker.start()
    assert gate.reached.wait(30)
    # As a second process starting now finds them: one queued only in the first's
    # memory (queued again), one running under a live lease (not touched: its worker
    # may be alive; test_leases.py covers the lease running out).
    wired.queue.pending.clear()
    assert service.recover() == (1, 0)
    assert wired.queue.pending == [waiting.id]
    assert service.get(wired.key, running.id).status is Status.PROCESSING
    gate.open()
    worker.join(30)
    assert service.get(wired.key, running.id).status is Status.SUCCEEDED


def test_the_clock_sets_created_at(settings: Settings) -> None:
    from repligate.testing.fakes import FakeClock

    clock = FakeClock()
    container = build_container(
        settings, provider=ScriptedProvider(), queue=ManualQueue.factory(), clock=clock
    )
    migrate.upgrade(container.engine)
    with container.sessions() as session:
        key, _ = keys.create(session, name="k")
    spec = container.service.registry.model("stability-ai", "stable-diffusion")
    first = container.service.create(key, spec, SD_INPUT)
    clock.advance(90)
    second = container.service.create(key, spec, SD_INPUT)
    assert second.created_at - first.created_at == timedelta(seconds=90)
    container.engine.dispose()
