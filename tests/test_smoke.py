from fastapi.testclient import TestClient

from tests.conftest import FAST_SD_INPUT, SD_REF


def test_health_answers_without_a_key(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_sync_prediction_returns_png_urls(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/replicate/v1/predictions", json={"version": SD_REF, "input": FAST_SD_INPUT}, headers=auth
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert len(body["data"]) == 1
    image = client.get(body["data"][0]["url"])
    assert image.status_code == 200
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
