"""After a crash: a new server on the same data dir runs what never started and fails what
was cut off mid-run, so nothing stays `starting` or `processing` forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from repligate.lifecycle import Status
from repligate.models import stable_diffusion
from repligate.records import Prediction
from repligate.service import new_prediction_id
from repligate.settings import Settings
from repligate.store import predictions as store
from tests.api_helpers import app_client, finished, image
from tests.conftest import FAST_SD_INPUT, make_token


def _leave_behind(client: TestClient, key_id: str, status: Status, age: timedelta) -> str:
    """Write a prediction row as a crashed process leaves it (never queued here)."""
    spec = stable_diffusion.MODEL
    now = datetime.now(UTC)
    prediction = Prediction.starting(
        id=new_prediction_id(),
        api_key_id=key_id,
        model=spec.ref,
        version=spec.version,
        input=FAST_SD_INPUT,
        created_at=now - age,
    )
    with client.app.state.container.sessions() as session:  # type: ignore[attr-defined]
        store.insert(session, prediction)
        if status is Status.PROCESSING:
            assert store.move(session, prediction.id, Status.PROCESSING, started_at=now)
    return prediction.id


def test_restart_runs_the_starting_and_fails_the_processing(settings: Settings) -> None:
    with app_client(settings) as first:
        token = make_token(first, "survivor")
        auth = {"Authorization": f"Bearer {token}"}
        key_id = first.app.state.container.service.authenticate(token).id  # type: ignore[attr-defined]
        waiting = _leave_behind(first, key_id, Status.STARTING, timedelta(seconds=20))
        running = _leave_behind(first, key_id, Status.PROCESSING, timedelta(seconds=10))
        # The old process never ran them: both are still as the crash left them.
        statuses = {
            p["id"]: p["status"]
            for p in first.get("/v1/predictions", headers=auth).json()["results"]
        }
        assert statuses == {waiting: "starting", running: "processing"}

    with app_client(settings) as second:
        done = finished(second, f"/v1/predictions/{waiting}", auth)
        assert done["status"] == "succeeded", done
        assert image(second, done["output"][0]).size == (64, 64)
        assert done["started_at"] and done["completed_at"]

        cut_off = second.get(f"/v1/predictions/{running}", headers=auth).json()
        assert cut_off["status"] == "failed"
        assert "server stopped" in cut_off["error"]
        assert cut_off["output"] is None
        assert cut_off["completed_at"] is not None
        assert cut_off["metrics"]["total_time"] >= 10

        listed = second.get("/v1/predictions", headers=auth).json()["results"]
        assert {p["status"] for p in listed} == {"succeeded", "failed"}

    # A third start finds nothing left to recover: the outcomes stay as they are.
    with app_client(settings) as third:
        statuses = {
            p["id"]: p["status"]
            for p in third.get("/v1/predictions", headers=auth).json()["results"]
        }
        assert statuses == {waiting: "succeeded", running: "failed"}
