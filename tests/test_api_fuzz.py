"""Whatever a client sends, the answer is a problem or a prediction: never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repligate.app import build_container, create_app
from repligate.models import all_models
from repligate.settings import Settings
from repligate.testing.fakes import ManualQueue
from tests.conftest import make_token

MODELS = all_models()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real models and provider behind a queue that runs nothing, and no webhook
    sender: whatever is accepted stays queued."""
    idle = settings.model_copy(update={"webhook_workers": 0})
    container = build_container(idle, queue=ManualQueue.factory())
    with TestClient(create_app(idle, container)) as test_client:
        yield test_client


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(client)}"}


def _inputs_for(spec_index: int) -> st.SearchStrategy[dict[str, Any]]:
    names = list(MODELS[spec_index].schemas["Input"]["properties"])
    return st.dictionaries(st.sampled_from([*names, "bogus"]), json_values, max_size=6)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_no_body_gets_a_server_error(
    client: TestClient, auth: dict[str, str], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(MODELS) - 1))
    spec = MODELS[index]
    body = data.draw(
        st.one_of(
            st.builds(lambda i: {"version": spec.version, "input": i}, _inputs_for(index)),
            st.dictionaries(st.sampled_from(["version", "input", "webhook", "x"]), json_values),
            json_values,
        )
    )
    path = data.draw(st.sampled_from(["/v1/predictions", f"/v1/models/{spec.ref}/predictions"]))
    response = client.post(
        path,
        content=json.dumps(body),
        headers={**auth, "Content-Type": "application/json", "Prefer": "respond-async"},
    )
    assert response.status_code in (201, 400, 404, 422), response.text
    if response.status_code == 201:  # a valid body: a prediction, queued (nothing runs)
        assert response.json()["status"] == "starting"
        assert response.json()["model"] == spec.ref
        return
    problem = response.json()
    assert problem["status"] == response.status_code
    assert isinstance(problem["detail"], str) and problem["detail"]
