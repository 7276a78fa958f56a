"""GET /v1/predictions: newest first, Replicate's page shape, cursor pages that keep the
caller's prefix and filters, and the created_after / created_before filters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.settings import Settings
from tests.api_helpers import app_client, finished
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token


@pytest.fixture
def paged(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str], list[str]]]:
    """An app with pages of 2 and five predictions of one key (ids oldest first)."""
    with app_client(settings, list_page_size=2) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        ids = []
        for index in range(5):
            body = {"version": SD_REF, "input": {**FAST_SD_INPUT, "seed": index}}
            response = client.post("/v1/predictions", json=body, headers=auth)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        # Another key's prediction never shows up in this key's pages.
        other = {"Authorization": f"Bearer {make_token(client, 'other')}"}
        body = {"version": SD_REF, "input": FAST_SD_INPUT}
        assert client.post("/v1/predictions", json=body, headers=other).status_code == 201
        yield client, auth, ids


def _get(client: TestClient, url: str, auth: dict[str, str], **params: str) -> dict[str, Any]:
    # No params at all for next/previous URLs: httpx drops a URL's query for params={}.
    response = client.get(url, headers=auth, params=params or None)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert set(page) == {"next", "previous", "results"}
    return page


def _ids(page: dict[str, Any]) -> list[str]:
    return [p["id"] for p in page["results"]]


def _when(prediction: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(prediction["created_at"].replace("Z", "+00:00"))


def test_list_is_newest_first_in_replicate_shape(client: TestClient, auth: dict[str, str]) -> None:
    assert _get(client, "/v1/predictions", auth) == {"next": None, "previous": None, "results": []}
    created = []
    for seed in (1, 2, 3):
        body = {"version": SD_REF, "input": {**FAST_SD_INPUT, "seed": seed}}
        created.append(client.post("/v1/predictions", json=body, headers=auth).json())
    finished(client, created[-1]["urls"]["get"], auth)
    page = _get(client, "/v1/predictions", auth)
    assert _ids(page) == [p["id"] for p in reversed(created)]
    assert page["next"] is None and page["previous"] is None
    newest = page["results"][0]
    assert newest["model"] == "stability-ai/stable-diffusion"
    assert newest["urls"]["get"] == created[-1]["urls"]["get"]
    assert newest["input"] == {**FAST_SD_INPUT, "seed": 3}
    times = [_when(p) for p in page["results"]]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
def test_pages_follow_next_and_previous_with_the_callers_prefix(
    paged: tuple[TestClient, dict[str, str], list[str]], prefix: str
) -> None:
    client, auth, ids = paged
    newest_first = list(reversed(ids))
    pages = [_get(client, f"{prefix}/predictions", auth)]
    while pages[-1]["next"] and len(pages) < 5:
        url = pages[-1]["next"]
        assert url.startswith(f"http://testserver{prefix}/predictions?")
        if prefix == "/v1":
            assert "/replicate/" not in url
        pages.append(_get(client, url, auth))
    assert [_ids(p) for p in pages] == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    assert pages[0]["previous"] is None
    assert pages[-1]["next"] is None
    for page in pages:
        for prediction in page["results"]:
            assert prediction["urls"]["get"].startswith(f"http://testserver{prefix}/predictions/")

    # And back again from the last page.
    back = [pages[-1]]
    while back[-1]["previous"] and len(back) < 5:
        assert back[-1]["previous"].startswith(f"http://testserver{prefix}/predictions?")
        back.append(_get(client, back[-1]["previous"], auth))
    assert [_ids(p) for p in back] == [_ids(p) for p in reversed(pages)]
    assert back[-1]["previous"] is None


def test_created_after_is_inclusive_and_created_before_exclusive(
    paged: tuple[TestClient, dict[str, str], list[str]],
) -> None:
    client, auth, ids = paged
    everything: list[dict[str, Any]] = []
    url: str | None = "/v1/predictions"
    while url and len(everything) < 10:
        page = _get(client, url, auth)
        everything += page["results"]
        url = page["next"]
    assert [p["id"] for p in everything] == list(reversed(ids))
    middle = everything[2]["created_at"]

    after: list[str] = []
    url = "/v1/predictions"
    params = {"created_after": middle}
    while url and len(after) < 10:
        page = _get(client, url, auth, **params)
        after += _ids(page)
        url, params = page["next"], {}
        if url:
            # The filter travels in the next URL.
            assert "created_after=" in url
    assert after == [p["id"] for p in everything[:3]]

    before = _ids(_get(client, "/v1/predictions", auth, created_before=middle))
    assert before == [p["id"] for p in everything[3:5]]

    # An offset is understood; both filters together give the overlap.
    when = _when(everything[3])
    shifted = when.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert shifted.endswith("+02:00")
    both = _get(
        client,
        "/v1/predictions",
        auth,
        created_after=everything[4]["created_at"],
        created_before=shifted,
    )
    assert _ids(both) == [everything[4]["id"]]
    future = _get(client, "/v1/predictions", auth, created_after="2999-01-01T00:00:00Z")
    assert future["results"] == [] and future["next"] is None
