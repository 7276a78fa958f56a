"""The lifecycle table, and the store's compare-and-set that enforces it, under races."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import lifecycle
from repligate.lifecycle import Status
from repligate.records import Prediction
from repligate.store import db, migrate
from repligate.store import keys as key_store
from repligate.store import predictions as store

EXPECTED_MOVES = {
    (Status.STARTING, Status.PROCESSING),
    (Status.STARTING, Status.FAILED),
    (Status.STARTING, Status.CANCELED),
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


def sqlite_sessions(path: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    return engine, db.make_sessions(engine)


class PredictionRaces(RuleBasedStateMachine):
    """Workers and cancels act on one prediction in any order, any number of times; the
    row must always follow the table, and once terminal never change again."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.engine, self.sessions = sqlite_sessions(f"{self.tmp.name}/db.sqlite")
        with self.sessions() as session:
            key, _ = key_store.create(session, name="k")
            store.insert(session, new_prediction(key.id, "p1"))
        self.model_status = Status.STARTING
        self.terminal_writes = 0

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()

    @rule(new=st.sampled_from(list(Status)))
    def someone_moves_it(self, new: Status) -> None:
        with self.sessions() as session:
            applied = store.move(session, "p1", new)
        assert applied is lifecycle.can_move(self.model_status, new)
        if applied:
            self.model_status = new
            if new.is_terminal:
                self.terminal_writes += 1

    @rule(text=st.text(max_size=5))
    def worker_logs(self, text: str) -> None:
        with self.sessions() as session:
            still_running = store.append_logs(session, "p1", text)
        assert still_running is (self.model_status is Status.PROCESSING)

    @invariant()
    def row_matches_and_terminal_is_final(self) -> None:
        with self.sessions() as session:
            row = store.get(session, "p1")
        assert row is not None
        assert row.status is self.model_status
        assert self.terminal_writes <= 1


TestPredictionRaces = PredictionRaces.TestCase
TestPredictionRaces.settings = hsettings(max_examples=30, stateful_step_count=15, deadline=None)
