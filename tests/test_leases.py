"""Leases: a run whose worker stops renewing its lease is queued again by the reaper, then
failed after ``max_attempts`` runs; a worker that lost its lease writes nothing more; a
live lease is never touched. On SQLite and PostgreSQL, with a clock the test moves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from repligate.app import Container, build_container
from repligate.events import Log
from repligate.leases import LOST_ERROR
from repligate.lifecycle import Status
from repligate.records import ApiKey, Prediction
from repligate.settings import Settings
from repligate.store import keys, migrate
from repligate.store import predictions as store
from repligate.testing.fakes import FakeClock, Gate, ManualQueue, ScriptedProvider

SD_INPUT = {"prompt": "a fox"}
LEASE = 60.0


@dataclass
class Leased:
    container: Container
    provider: ScriptedProvider
    clock: FakeClock
    key: ApiKey

    @property
    def queue(self) -> ManualQueue:
        assert isinstance(self.container.queue, ManualQueue)
        return self.container.queue

    def create(self) -> Prediction:
        spec = self.container.service.registry.model("stability-ai", "stable-diffusion")
        return self.container.service.create(self.key, spec, SD_INPUT)

    def row(self, prediction_id: str) -> Prediction:
        with self.container.sessions() as session:
            found = store.get(session, prediction_id)
        assert found is not None
        return found

    def reap(self) -> tuple[int, int]:
        assert self.container.reaper is not None
        return self.container.reaper.reap()


@pytest.fixture
def leased(settings: Settings, database_url: str | None) -> Iterator[Leased]:
    provider = ScriptedProvider(returns="done")
    clock = FakeClock()
    settings = settings.model_copy(
        update={"database_url": database_url, "lease_seconds": LEASE, "max_attempts": 2}
    )
    container = build_container(
        settings, provider=provider, queue=ManualQueue.factory(), clock=clock
    )
    migrate.upgrade(container.engine)
    with container.sessions() as session:
        key, _ = keys.create(session, name="k")
    yield Leased(container, provider, clock, key)
    assert container.leases is not None
    container.leases.stop()
    container.engine.dispose()


def _run_until_gate(leased: Leased, gate: Gate) -> threading.Thread:
    """A worker thread runs the next queued prediction up to the gate (as a worker that
    then freezes or dies would)."""
    worker = threading.Thread(target=leased.queue.run_next)
    worker.start()
    assert gate.reached.wait(30)
    return worker


def test_a_claim_takes_a_lease_and_counts_an_attempt(leased: Leased) -> None:
    created = leased.create()
    leased.queue.run_all()
    done = leased.row(created.id)
    assert done.status is Status.SUCCEEDED and done.attempts == 1
    # The claim is a compare-and-set: a second delivery of the same task runs nothing.
    leased.container.queue.submit(created.id, created.model)
    leased.queue.run_all()
    assert len(leased.provider.runs) == 1 and leased.row(created.id).attempts == 1


def test_a_live_lease_is_left_alone_and_renewing_keeps_it(leased: Leased) -> None:
    gate = Gate()
    leased.provider.script = [gate]
    created = leased.create()
    worker = _run_until_gate(leased, gate)
    leased.clock.advance(LEASE - 1)
    assert leased.reap() == (0, 0)
    # The keeper renews from now: a whole lease more.
    assert leased.container.leases is not None
    leased.container.leases.renew()
    leased.clock.advance(LEASE - 1)
    assert leased.reap() == (0, 0)
    assert leased.row(created.id).status is Status.PROCESSING
    gate.open()
    worker.join(30)
    assert leased.row(created.id).status is Status.SUCCEEDED


def test_a_lost_run_is_queued_again_and_the_old_worker_writes_nothing(leased: Leased) -> None:
    gate = Gate()
    leased.provider.script = [Log("first run"), gate]
    created = leased.create()
    worker = _run_until_gate(leased, gate)
    # The worker stops renewing (frozen, or its host gone) and its lease runs out.
    leased.clock.advance(LEASE + 1)
    assert leased.reap() == (1, 0)
    requeued = leased.row(created.id)
    assert requeued.status is Status.STARTING
    assert requeued.started_at is None and requeued.output is None
    assert "lease ran out" in requeued.logs and "run 2 of at most 2" in requeued.logs
    assert leased.queue.pending == [created.id]
    # The old worker wakes up: none of its writes applies any more.
    gate.open()
    worker.join(30)
    assert leased.row(created.id).status is Status.STARTING
    # The rerun (another worker) finishes it: two claims in all.
    leased.provider.script = []
    leased.queue.run_all()
    done = leased.row(created.id)
    assert done.status is Status.SUCCEEDED and done.output == "done"
    assert done.attempts == 2
    assert len(leased.provider.runs) == 2


def test_after_max_attempts_a_lost_run_fails_saying_why(leased: Leased) -> None:
    gates = [Gate(), Gate()]
    created = leased.create()
    for gate in gates:
        leased.provider.script = [gate]
        worker = _run_until_gate(leased, gate)
        leased.clock.advance(LEASE + 1)
        reaped = leased.reap()
        gate.open()
        worker.join(30)
    assert reaped == (0, 1)
    failed = leased.row(created.id)
    assert failed.status is Status.FAILED
    assert failed.error == LOST_ERROR.format(runs=2)
    assert failed.attempts == 2 and failed.completed_at is not None
    assert leased.queue.pending == []


def test_a_worker_that_lost_its_lease_is_told_to_stop(leased: Leased) -> None:
    gate = Gate()
    leased.provider.script = [gate]
    created = leased.create()
    worker = _run_until_gate(leased, gate)
    leased.clock.advance(LEASE + 1)
    assert leased.reap() == (1, 0)
    keeper = leased.container.leases
    assert keeper is not None
    keeper.renew()  # finds the lease gone: raises the prediction's cancel flag
    gate.open()  # the gate checks the flag: the run stops here
    worker.join(30)
    assert not worker.is_alive()
    assert leased.row(created.id).status is Status.STARTING
    assert keeper.held() == set()
