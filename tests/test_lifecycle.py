"""The lifecycle table, and the store's compare-and-set that enforces it, under races."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import lifecycle
from repligate.bus import EventKind, InProcessBus, PredictionEvent
from repligate.lifecycle import Status
from repligate.records import Prediction
from repligate.store import db, migrate
from repligate.store import keys as key_store
from repligate.store import predictions as store
from repligate.store import webhooks as webhook_store
from repligate.testing.fakes import FakeClock
from repligate.transitions import Transitions

EXPECTED_MOVES = {
    (Status.STARTING, Status.PROCESSING),
    (Status.STARTING, Status.FAILED),
    (Status.STARTING, Status.CANCELED),
    (Status.PROCESSING, Status.STARTING),  # handed back by a stopping worker
    (Status.PROCESSING, Status.SUCCEEDED),
    (Status.PROCESSING, Status.FAILED),
    (Status.PROCESSING, Status.CANCELED),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(Status, Status)))
def test_every_pair_follows_the_table(current: Status, new: Status) -> None:
    allowed = (current, new) in EXPECTED_MOVES
    assert lifecycle.can_move(current, new) is allowed
    assert (current in lifecycle.sources_of(new)) is allowed
    if allowed:
        lifecycle.check(current, new)
    else:
        with pytest.raises(lifecycle.InvalidTransition):
            lifecycle.check(current, new)


def test_terminal_statuses_have_no_way_out() -> None:
    for status in lifecycle.TERMINAL:
        assert status.is_terminal
        assert not any(lifecycle.can_move(status, other) for other in Status)


def new_prediction(api_key_id: str, prediction_id: str) -> Prediction:
    return Prediction.starting(
        id=prediction_id,
        api_key_id=api_key_id,
        model="stability-ai/stable-diffusion",
        version="v",
        input={},
        created_at=datetime.now(UTC),
    )


def with_webhook(prediction: Prediction) -> Prediction:
    return dataclasses.replace(prediction, webhook="https://example.com/hook")


def webhook_events(sessions: sessionmaker[Session], prediction_id: str) -> list[str]:
    """The events in the prediction's webhook outbox, in the order they were written."""
    with sessions() as session:
        return [d.event for d, _ in webhook_store.delivery_log(session, prediction_id)]


def sqlite_sessions(path: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    return engine, db.make_sessions(engine)


class Recorder:
    """A bus subscriber that keeps every event, per prediction, in arrival order."""

    def __init__(self) -> None:
        self.events: dict[str, list[PredictionEvent]] = {}
        self._lock = threading.Lock()

    def __call__(self, event: PredictionEvent) -> None:
        with self._lock:
            self.events.setdefault(event.prediction.id, []).append(event)


def check_event_stream(events: list[PredictionEvent]) -> None:
    """What any subscriber may rely on for one prediction's events."""
    completed = [e for e in events if e.kind is EventKind.COMPLETED]
    assert len(completed) <= 1, "more than one completed event"
    if completed:
        assert events[-1].kind is EventKind.COMPLETED, "an event after completed"
    for event in events:
        p = event.prediction
        assert (p.completed_at is not None) is p.status.is_terminal
        assert p.status.is_terminal is (event.kind is EventKind.COMPLETED)
        if event.kind in (EventKind.STARTED, EventKind.LOGS, EventKind.OUTPUT):
            assert p.status is Status.PROCESSING
    # In write order: within one run (between claims), logs only grow.
    previous = ""
    for event in events:
        if event.kind is EventKind.STARTED:
            previous = event.prediction.logs
        assert event.prediction.logs.startswith(previous), "events out of order"
        previous = event.prediction.logs


class PredictionRaces(RuleBasedStateMachine):
    """Requests, workers and restarts act on predictions in any order, any number of
    times, through the transition point. The rows follow the table, terminal is final,
    each prediction gets exactly one completed event, completed_at is set exactly when
    the status is terminal, and each prediction's events arrive in order."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.engine, self.sessions = sqlite_sessions(f"{self.tmp.name}/db.sqlite")
        with self.sessions() as session:
            self.key, _ = key_store.create(session, name="k")
        self.recorder = Recorder()
        bus = InProcessBus()
        bus.subscribe(self.recorder)
        self.clock = FakeClock()
        self.transitions = Transitions(self.sessions, bus, self.clock)
        self.expected: dict[str, Status] = {}

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()

    predictions = st.integers(min_value=0, max_value=3)

    def _pick(self, index: int) -> str | None:
        ids = sorted(self.expected)
        return ids[index % len(ids)] if ids else None

    def _applied(self, prediction_id: str, new: Status, result: Prediction | None) -> None:
        allowed = lifecycle.can_move(self.expected[prediction_id], new)
        assert (result is not None) is allowed
        if result is not None:
            assert result.status is new
            self.expected[prediction_id] = new

    @rule()
    def create(self) -> None:
        prediction_id = f"p{len(self.expected)}"
        with self.sessions() as session:
            store.insert(session, with_webhook(new_prediction(self.key.id, prediction_id)))
        self.expected[prediction_id] = Status.STARTING

    @rule(index=predictions)
    def worker_claims(self, index: int) -> None:
        if (pid := self._pick(index)) is not None:
            self._applied(pid, Status.PROCESSING, self.transitions.start(pid))

    @rule(index=predictions, text=st.text(max_size=5))
    def worker_logs(self, index: int, text: str) -> None:
        if (pid := self._pick(index)) is not None:
            result = self.transitions.append_logs(pid, text)
            assert (result is not None) is (self.expected[pid] is Status.PROCESSING)

    @rule(index=predictions, value=st.integers())
    def worker_outputs(self, index: int, value: int) -> None:
        if (pid := self._pick(index)) is not None:
            result = self.transitions.set_output(pid, [value])
            assert (result is not None) is (self.expected[pid] is Status.PROCESSING)

    @rule(index=predictions, status=st.sampled_from([Status.SUCCEEDED, Status.FAILED]))
    def worker_finishes(self, index: int, status: Status) -> None:
        if (pid := self._pick(index)) is not None:
            if self.expected[pid] is Status.STARTING:
                return  # a worker only finishes what it claimed
            self._applied(pid, status, self.transitions.finish(pid, status, output=["x"]))

    @rule(index=predictions, seconds=st.floats(min_value=0, max_value=100))
    def user_cancels_later(self, index: int, seconds: float) -> None:
        self.clock.advance(seconds)
        if (pid := self._pick(index)) is not None:
            self._applied(pid, Status.CANCELED, self.transitions.cancel(pid))

    @rule(index=predictions)
    def worker_is_killed_and_server_recovers(self, index: int) -> None:
        if (pid := self._pick(index)) is not None and self.expected[pid] is Status.PROCESSING:
            self._applied(pid, Status.FAILED, self.transitions.fail(pid, "lost"))

    @rule(index=predictions)
    def stopping_worker_hands_back(self, index: int) -> None:
        if (pid := self._pick(index)) is not None:
            result = self.transitions.hand_back(pid, "handed back")
            assert (result is not None) is (self.expected[pid] is Status.PROCESSING)
            if result is not None:
                self.expected[pid] = Status.STARTING

    @invariant()
    def rows_match_and_events_hold(self) -> None:
        for pid, status in self.expected.items():
            with self.sessions() as session:
                row = store.get(session, pid)
            assert row is not None and row.status is status
            assert (row.completed_at is not None) is status.is_terminal
            events = self.recorder.events.get(pid, [])
            check_event_stream(events)
            completed = [e for e in events if e.kind is EventKind.COMPLETED]
            assert len(completed) == (1 if status.is_terminal else 0)
            # Each event's webhook delivery was written with it: same events, same order.
            assert webhook_events(self.sessions, pid) == [e.kind.value for e in events]


TestPredictionRaces = PredictionRaces.TestCase
TestPredictionRaces.settings = hsettings(max_examples=40, stateful_step_count=25, deadline=None)


def test_racing_threads_give_one_completed_event_and_ordered_events(tmp_path: Path) -> None:
    """A worker flushing logs and outputs while requests cancel it from other threads."""
    engine, sessions = sqlite_sessions(str(tmp_path / "db.sqlite"))
    recorder = Recorder()
    bus = InProcessBus()
    bus.subscribe(recorder)
    transitions = Transitions(sessions, bus, FakeClock())
    with sessions() as session:
        key, _ = key_store.create(session, name="k")
        for n in range(5):
            store.insert(session, with_webhook(new_prediction(key.id, f"r{n}")))
    for n in range(5):
        pid = f"r{n}"
        assert transitions.start(pid) is not None
        barrier = threading.Barrier(4)

        def worker(pid: str = pid, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for i in range(20):
                transitions.append_logs(pid, f"line {i}\n")
                transitions.set_output(pid, list(range(i)))
            transitions.finish(pid, Status.SUCCEEDED, output=["done"])

        def canceler(pid: str = pid, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            transitions.cancel(pid)

        threads = [threading.Thread(target=worker)] + [
            threading.Thread(target=canceler) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        events = recorder.events[pid]
        check_event_stream(events)
        assert sum(e.kind is EventKind.COMPLETED for e in events) == 1
        assert webhook_events(sessions, pid) == [e.kind.value for e in events]
        with sessions() as session:
            final = store.get(session, pid)
        assert final is not None and final.status is events[-1].prediction.status
    engine.dispose()
