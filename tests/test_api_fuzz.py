"""Whatever a client sends, the answer is a problem or a prediction: never a 500."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repligate.models import all_models

# Models without a runner: a valid input is refused too (422), so nothing heavy runs.
NOT_RUNNABLE = [spec for spec in all_models() if spec.runner is None]

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


def _inputs_for(spec_index: int) -> st.SearchStrategy[dict[str, Any]]:
    names = list(NOT_RUNNABLE[spec_index].schemas["Input"]["properties"])
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
    index = data.draw(st.integers(0, len(NOT_RUNNABLE) - 1))
    spec = NOT_RUNNABLE[index]
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
    assert response.status_code in (400, 404, 422), response.text
    problem = response.json()
    assert problem["status"] == response.status_code
    assert isinstance(problem["detail"], str) and problem["detail"]
