"""Every mistake a caller can make gets Replicate's problem shape and a 4xx, never a 500."""

from __future__ import annotations

import base64
from typing import Any

from fastapi.testclient import TestClient

from repligate.settings import Settings
from tests.api_helpers import app_client, assert_problem
from tests.conftest import FAST_SD_INPUT, SD_REF, SD_VERSION, make_token


def _post(client: TestClient, auth: dict[str, str], body: Any, **headers: str) -> Any:
    return client.post("/v1/predictions", json=body, headers={**auth, **headers})


def _no_predictions(client: TestClient, auth: dict[str, str]) -> None:
    listed = client.get("/v1/predictions", headers=auth)
    assert listed.status_code == 200
    assert listed.json()["results"] == []


def test_no_key_is_401(client: TestClient) -> None:
    for prefix in ("/v1", "/replicate/v1"):
        response = client.post(f"{prefix}/predictions", json={"version": SD_REF, "input": {}})
        body = assert_problem(response, 401)
        assert body["detail"] == "You did not pass an authentication token"
        assert body["title"] == "Unauthenticated"
    assert_problem(client.get("/v1/predictions"), 401)
    assert_problem(client.get("/v1/models/stability-ai/stable-diffusion"), 401)


def test_unknown_key_and_wrong_scheme_are_401(client: TestClient, token: str) -> None:
    for header in ("Bearer r8_not-a-real-token", f"Basic {token}", token, "Bearer "):
        response = client.get("/v1/predictions", headers={"Authorization": header})
        assert_problem(response, 401)


def test_unknown_version_is_422(client: TestClient, auth: dict[str, str]) -> None:
    for version in (
        "0" * 64,
        f"stability-ai/sdxl:{SD_VERSION}",  # a real hash under another model's name
        "nobody/nothing",
        "not a version at all",
        "",
    ):
        response = _post(client, auth, {"version": version, "input": FAST_SD_INPUT})
        body = assert_problem(response, 422)
        assert body["title"] == "Invalid version or not permitted", version
    _no_predictions(client, auth)


def test_unknown_model_and_prediction_are_404(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/models/nobody/nothing/predictions", json={"input": {}}, headers=auth
    )
    assert_problem(response, 404)
    assert_problem(client.get("/v1/predictions/doesnotexist", headers=auth), 404)
    assert_problem(client.post("/v1/predictions/doesnotexist/cancel", headers=auth), 404)
    assert_problem(client.get("/replicate/v1/predictions/doesnotexist", headers=auth), 404)


def test_unknown_route_and_method_are_problems(client: TestClient, auth: dict[str, str]) -> None:
    assert_problem(client.get("/v1/nothing-here", headers=auth), 404)
    assert_problem(client.get("/nothing"), 404)
    assert_problem(client.delete("/v1/predictions", headers=auth), 405)


def test_malformed_json_is_400(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for raw in (b"{not json", b"", b"\xff\xfe", b'{"version": NaN}', b"[" * 100_000):
        response = client.post("/v1/predictions", content=raw, headers=headers)
        body = assert_problem(response, 400)
        assert body["title"] == "Bad request", raw[:20]
    _no_predictions(client, auth)


def test_body_must_be_an_object(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for raw in (b"[1, 2]", b'"text"', b"3", b"null"):
        response = client.post("/v1/predictions", content=raw, headers=headers)
        assert_problem(response, 422)


def test_body_over_the_limit_is_413(settings: Settings) -> None:
    with app_client(settings, max_request_bytes=1024) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        big = {"version": SD_REF, "input": {**FAST_SD_INPUT, "prompt": "x" * 2000}}
        body = assert_problem(_post(client, auth, big), 413)
        assert "1024" in body["detail"]
        # Streamed without a Content-Length, the cap still holds.
        chunks = iter([b'{"version": "' + b"y" * 800, b"z" * 800 + b'"}'])
        response = client.post(
            "/v1/predictions",
            content=chunks,
            headers={**auth, "Content-Type": "application/json"},
        )
        assert_problem(response, 413)
        # Just under the limit is fine.
        ok = _post(client, auth, {"version": SD_REF, "input": FAST_SD_INPUT}, Prefer="wait")
        assert ok.status_code == 201, ok.text


def test_missing_and_unknown_body_keys_are_422(client: TestClient, auth: dict[str, str]) -> None:
    body = assert_problem(_post(client, auth, {"input": FAST_SD_INPUT}), 422)
    assert [f["type"] for f in body["invalid_fields"]] == ["required"]
    assert "version" in body["invalid_fields"][0]["description"]
    assert body["detail"] == "- version is required\n"

    body = assert_problem(_post(client, auth, {"version": SD_REF}), 422)
    assert [f["type"] for f in body["invalid_fields"]] == ["required"]
    assert "input" in body["invalid_fields"][0]["description"]

    extra = {"version": SD_REF, "input": FAST_SD_INPUT, "colour": "red"}
    body = assert_problem(_post(client, auth, extra), 422)
    assert body["invalid_fields"] == [
        {
            "type": "additional_property_not_allowed",
            "field": "colour",
            "description": "Additional property colour is not allowed (the body takes "
            "input, stream, version, webhook, webhook_completed, webhook_events_filter)",
        }
    ]
    assert body["detail"].startswith("- colour: Additional property colour is not allowed")

    body = assert_problem(_post(client, auth, {"version": 5, "input": FAST_SD_INPUT}), 422)
    assert body["invalid_fields"][0]["type"] == "invalid_type"
    assert body["invalid_fields"][0]["field"] == "version"

    body = assert_problem(_post(client, auth, {"version": SD_REF, "input": "a fox"}), 422)
    assert body["invalid_fields"][0]["type"] == "invalid_type"
    _no_predictions(client, auth)


def test_webhook_to_a_private_address_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    for key in ("webhook", "webhook_completed"):
        body = {"version": SD_REF, "input": FAST_SD_INPUT, key: "http://127.0.0.1:9/hook"}
        problem = assert_problem(_post(client, auth, body), 422)
        assert "webhook" in problem["detail"].lower()
        assert "REPLIGATE_WEBHOOK_ALLOW_PRIVATE" in problem["detail"]
    _no_predictions(client, auth)


def test_prefer_wait_out_of_range_is_422(client: TestClient, auth: dict[str, str]) -> None:
    body = {"version": SD_REF, "input": FAST_SD_INPUT}
    for prefer in ("wait=0", "wait=61", "wait=99999999999999999999"):
        for path in ("/v1/predictions", "/replicate/v1/predictions"):
            response = client.post(path, json=body, headers={**auth, "Prefer": prefer})
            problem = assert_problem(response, 422)
            assert "wait" in problem["detail"], prefer
    _no_predictions(client, auth)


def test_bad_list_queries_are_4xx(client: TestClient, auth: dict[str, str]) -> None:
    forged = base64.urlsafe_b64encode(b"n|2024-01-01T00:00:00|abc").decode()
    bad_direction = base64.urlsafe_b64encode(b"x|2024-01-01T00:00:00+00:00|abc").decode()
    for query in (
        {"cursor": "!!!not-a-cursor"},
        {"cursor": "bm90IGEgY3Vyc29y"},  # base64 of "not a cursor"
        {"cursor": forged},  # a cursor without a time zone
        {"cursor": bad_direction},
        {"created_after": "yesterday"},
        {"created_before": "2024-13-45T00:00:00Z"},
        {"created_after": "2024-01-01T00:00:00"},  # no time zone
    ):
        response = client.get("/v1/predictions", params=query, headers=auth)
        assert_problem(response, 422)
