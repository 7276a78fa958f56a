"""Input validation for all ten models over HTTP: each bad field named with Replicate's
error type, a valid input accepted, and a model without a runner refused clearly, creating
nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.app import build_container, create_app
from repligate.models import all_models
from repligate.settings import Settings
from repligate.testing.fakes import ManualQueue
from tests.api_helpers import assert_problem
from tests.conftest import FAST_SD_INPUT, SD_VERSION, make_token

MODELS = {spec.ref: spec for spec in all_models()}
URL = "https://example.com/picture.png"

# model -> (an input with several mistakes, the (type, field name) each must be reported as)
INVALID: dict[str, tuple[dict[str, Any], set[tuple[str, str]]]] = {
    "stability-ai/stable-diffusion": (
        {
            "width": 100,
            "scheduler": "EULER",
            "num_outputs": 5,
            "guidance_scale": 0,
            "num_inference_steps": True,
            "seed": "1",
            "colour": "red",
        },
        {
            ("enum", "width"),
            ("enum", "scheduler"),
            ("number_lte", "num_outputs"),
            ("number_gte", "guidance_scale"),
            ("invalid_type", "num_inference_steps"),
            ("invalid_type", "seed"),
            ("additional_property_not_allowed", "colour"),
        },
    ),
    "stability-ai/sdxl": (
        {"num_outputs": 0, "lora_scale": 1.5, "refine": "none", "apply_watermark": "yes"},
        {
            ("number_gte", "num_outputs"),
            ("number_lte", "lora_scale"),
            ("enum", "refine"),
            ("invalid_type", "apply_watermark"),
        },
    ),
    "stability-ai/stable-diffusion-inpainting": (
        {"num_outputs": "2", "scheduler": "X", "height": 500},
        {
            ("required", "image"),
            ("required", "mask"),
            ("invalid_type", "num_outputs"),
            ("enum", "scheduler"),
            ("enum", "height"),
        },
    ),
    "stability-ai/stable-diffusion-img2img": (
        {"prompt_strength": "high", "num_inference_steps": 0, "num_outputs": 9},
        {
            ("required", "image"),
            ("invalid_type", "prompt_strength"),
            ("number_gte", "num_inference_steps"),
            ("number_lte", "num_outputs"),
        },
    ),
    "lucataco/flux-schnell-lora": (
        {"num_inference_steps": 13, "aspect_ratio": "2:1", "output_quality": 101},
        {
            ("required", "prompt"),
            ("number_lte", "num_inference_steps"),
            ("enum", "aspect_ratio"),
            ("number_lte", "output_quality"),
        },
    ),
    "lucataco/flux-dev-lora": (
        {"prompt": 5, "guidance_scale": 11, "output_format": "gif", "disable_safety_checker": 1},
        {
            ("invalid_type", "prompt"),
            ("number_lte", "guidance_scale"),
            ("enum", "output_format"),
            ("invalid_type", "disable_safety_checker"),
        },
    ),
    "andreasjansson/stable-diffusion-animation": (
        {"width": 64, "num_animation_frames": 1, "output_format": "webm"},
        {
            ("required", "prompt_start"),
            ("required", "prompt_end"),
            ("enum", "width"),
            ("number_gte", "num_animation_frames"),
            ("enum", "output_format"),
        },
    ),
    "lucataco/animate-diff": (
        {"steps": 0, "path": "x.safetensors", "motion_module": "mm", "guidance_scale": 10.5},
        {
            ("number_gte", "steps"),
            ("enum", "path"),
            ("enum", "motion_module"),
            ("number_lte", "guidance_scale"),
        },
    ),
    "sujaykhandekar/object-removal": (
        {"objects_to_remove": ["person"], "mask": URL},
        {
            ("required", "image_path"),
            ("invalid_type", "objects_to_remove"),
            ("additional_property_not_allowed", "mask"),
        },
    ),
    "cjwbw/rembg": (
        {"image": 5, "size": 512},
        {("invalid_type", "image"), ("additional_property_not_allowed", "size")},
    ),
}

VALID: dict[str, dict[str, Any]] = {
    "stability-ai/stable-diffusion": FAST_SD_INPUT,
    "stability-ai/sdxl": {"prompt": "a fox", "width": 64, "height": 64, "seed": 2**63},
    "stability-ai/stable-diffusion-inpainting": {
        "image": URL,
        "mask": "data:image/png;base64,iVBORw0KGgo=",
    },
    "stability-ai/stable-diffusion-img2img": {"image": URL, "prompt_strength": 0.5},
    "lucataco/flux-schnell-lora": {"prompt": "a fox", "num_inference_steps": 12},
    "lucataco/flux-dev-lora": {"prompt": "a fox", "image": "http://example.com/a.jpg"},
    "andreasjansson/stable-diffusion-animation": {"prompt_start": "a", "prompt_end": "b"},
    "lucataco/animate-diff": {},
    "sujaykhandekar/object-removal": {"image_path": URL},
    "cjwbw/rembg": {"image": URL},
}


def _create(client: TestClient, auth: dict[str, str], ref: str, input_: Any) -> Any:
    version = MODELS[ref].version
    return client.post("/v1/predictions", json={"version": version, "input": input_}, headers=auth)


def _reported(problem: dict[str, Any]) -> set[tuple[str, str]]:
    """(type, field name) per invalid field; required/additional name it in the text."""
    found = set()
    for field in problem["invalid_fields"]:
        if field["type"] in ("required", "additional_property_not_allowed"):
            assert field["field"] == "input"
            name = field["description"].split(" is required")[0]
            if field["type"] == "additional_property_not_allowed":
                name = field["description"].removeprefix("Additional property ").split(" ")[0]
            found.add((field["type"], name))
        else:
            assert field["field"].startswith("input."), field
            found.add((field["type"], field["field"].removeprefix("input.")))
    return found


def test_the_cases_cover_all_ten_models() -> None:
    assert len(MODELS) == 10
    assert set(INVALID) == set(MODELS) == set(VALID)


@pytest.mark.parametrize("ref", sorted(INVALID))
def test_invalid_input_names_every_bad_field(
    client: TestClient, auth: dict[str, str], ref: str
) -> None:
    bad, expected = INVALID[ref]
    problem = assert_problem(_create(client, auth, ref, bad), 422)
    assert problem["title"] == "Input validation failed"
    assert _reported(problem) == expected
    for _, name in expected:
        assert name in problem["detail"]
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


@pytest.fixture
def idle_client(settings: Settings) -> Iterator[TestClient]:
    """The real models and provider, with a queue that runs nothing: a create is answered
    (and stored) without any model running."""
    container = build_container(settings, queue=ManualQueue.factory())
    with TestClient(create_app(settings, container)) as test_client:
        yield test_client


@pytest.mark.parametrize("ref", sorted(VALID))
def test_a_valid_input_is_accepted_for_every_model(idle_client: TestClient, ref: str) -> None:
    auth = {"Authorization": f"Bearer {make_token(idle_client)}"}
    response = _create(idle_client, auth, ref, VALID[ref])
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "starting"
    assert response.json()["input"] == VALID[ref]


def test_a_model_without_a_runner_is_refused_clearly(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every model of the seed has a runner now; a model added before its runner is written
    # (runner=None) is refused at create, on every route, naming it, and nothing is stored.
    ref = "cjwbw/rembg"
    specs = [dataclasses.replace(s, runner=None) if s.ref == ref else s for s in all_models()]
    monkeypatch.setattr("repligate.runtime.all_models", lambda: specs)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        owner, name = ref.split("/")
        for response in (
            _create(client, auth, ref, VALID[ref]),
            client.post(
                f"/v1/models/{owner}/{name}/predictions",
                json={"input": VALID[ref]},
                headers={**auth, "Prefer": "wait"},
            ),
            client.post(
                "/replicate/v1/predictions",
                json={"version": ref, "input": VALID[ref]},
                headers=auth,
            ),
        ):
            problem = assert_problem(response, 422)
            assert problem["title"] == "Model not available"
            assert ref in problem["detail"]
        assert client.get("/v1/predictions", headers=auth).json()["results"] == []


@pytest.mark.parametrize(
    "value", ["ftp://example.com/a.png", "/etc/passwd", "file:///etc/passwd", "example.com/a"]
)
def test_file_inputs_must_be_http_or_data_uris(
    client: TestClient, auth: dict[str, str], value: str
) -> None:
    cases = [
        ("stability-ai/stable-diffusion-img2img", "image"),
        ("stability-ai/stable-diffusion-inpainting", "mask"),
        ("sujaykhandekar/object-removal", "image_path"),
        ("cjwbw/rembg", "image"),
        ("stability-ai/sdxl", "image"),
        ("lucataco/flux-dev-lora", "image"),
    ]
    for ref, field in cases:
        problem = assert_problem(_create(client, auth, ref, {**VALID[ref], field: value}), 422)
        assert [(f["type"], f["field"]) for f in problem["invalid_fields"]] == [
            ("format", f"input.{field}")
        ], ref
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def test_booleans_are_not_numbers(client: TestClient, auth: dict[str, str]) -> None:
    ref = "stability-ai/stable-diffusion"
    for field in ("num_outputs", "guidance_scale", "seed", "width"):
        problem = assert_problem(_create(client, auth, ref, {**FAST_SD_INPUT, field: True}), 422)
        types = {f["type"] for f in problem["invalid_fields"] if f["field"] == f"input.{field}"}
        assert types & {"invalid_type", "enum"}, (field, problem)


def test_huge_and_non_finite_numbers_are_refused(client: TestClient, auth: dict[str, str]) -> None:
    sd = "stability-ai/stable-diffusion"
    problem = assert_problem(_create(client, auth, sd, {**FAST_SD_INPUT, "seed": 2**70}), 422)
    assert [f["field"] for f in problem["invalid_fields"]] == ["input.seed"]
    # 1e400 parses to infinity: refused whether or not the field has bounds.
    headers = {**auth, "Content-Type": "application/json"}
    animation = MODELS["andreasjansson/stable-diffusion-animation"].version
    raw = (
        f'{{"version": "{animation}", "input": '
        '{"prompt_start": "a", "prompt_end": "b", "prompt_strength": 1e400}}'
    )
    problem = assert_problem(client.post("/v1/predictions", content=raw, headers=headers), 422)
    assert [f["field"] for f in problem["invalid_fields"]] == ["input.prompt_strength"]
    raw = f'{{"version": "{SD_VERSION}", "input": {{"guidance_scale": -1e400}}}}'
    problem = assert_problem(client.post("/v1/predictions", content=raw, headers=headers), 422)
    assert [f["field"] for f in problem["invalid_fields"]] == ["input.guidance_scale"]
    # NaN is not JSON at all.
    raw = f'{{"version": "{SD_VERSION}", "input": {{"guidance_scale": NaN}}}}'
    assert_problem(client.post("/v1/predictions", content=raw, headers=headers), 400)
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def test_defaults_are_not_echoed_but_are_used(client: TestClient, auth: dict[str, str]) -> None:
    # Replicate echoes input as sent; the run still gets the schema's defaults (1 output).
    sent = {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 2}
    body = {"version": SD_VERSION, "input": sent}
    response = client.post("/v1/predictions", json=body, headers={**auth, "Prefer": "wait"})
    assert response.status_code == 201, response.text
    assert response.json()["input"] == sent
    assert response.json()["status"] == "succeeded"
    assert len(response.json()["output"]) == 1


def test_schema_and_extra_problems_are_reported_together(
    client: TestClient, auth: dict[str, str]
) -> None:
    version = "15a3689ee13b0d2616e98820eca31d4c3abcd36672df6afce5cb6feb1d66087d"
    response = client.post(
        "/v1/predictions",
        json={"version": version, "input": {"image": "ftp://x/y.png", "num_outputs": 99}},
        headers=auth,
    )
    assert response.status_code == 422
    fields = {(f["type"], f["field"]) for f in response.json()["invalid_fields"]}
    assert fields == {("number_lte", "input.num_outputs"), ("format", "input.image")}
