"""stability-ai/stable-diffusion-inpainting through the HTTP API, on tiny random weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.sd_family import (
    INPAINT_REF,
    SCHEDULERS,
    data_uri,
    half_mask,
    noise_image,
    output_images,
    output_names,
    predict,
)


def fast_input(**changes: Any) -> dict[str, Any]:
    inputs = {
        "prompt": "a cat on a bench",
        "image": data_uri(noise_image(64, 64)),
        "mask": data_uri(half_mask(64, 64)),
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 3,
    }
    return {**inputs, **changes}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_gives_an_image_of_width_by_height(
    client: TestClient, auth: dict[str, str], scheduler: str
) -> None:
    # Image and mask of other sizes (and shapes) are resized to width x height.
    body = predict(
        client,
        auth,
        INPAINT_REF,
        fast_input(
            scheduler=scheduler,
            image=data_uri(noise_image(100, 76)),
            mask=data_uri(half_mask(30, 20)),
            width=128,
            height=64,
        ),
    )
    [picture] = output_images(client, body)
    assert picture.size == (128, 64)
    assert picture.mode == "RGB"
    assert output_names(body) == ["out-0.png"]
    assert "Using seed: 3" in body["logs"]


def test_default_size_is_512(client: TestClient, auth: dict[str, str]) -> None:
    inputs = fast_input(num_inference_steps=1)
    del inputs["width"], inputs["height"]
    [picture] = output_images(client, predict(client, auth, INPAINT_REF, inputs))
    assert picture.size == (512, 512)


def test_num_outputs_is_one_batch_of_distinct_images(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, INPAINT_REF, fast_input(num_outputs=3))
    assert output_names(body) == ["out-0.png", "out-1.png", "out-2.png"]
    pictures = [np.asarray(picture) for picture in output_images(client, body)]
    assert not np.array_equal(pictures[0], pictures[1])
    assert not np.array_equal(pictures[1], pictures[2])


def test_the_same_seed_gives_the_same_image(client: TestClient, auth: dict[str, str]) -> None:
    first, second, other = (
        np.asarray(output_images(client, predict(client, auth, INPAINT_REF, inputs))[0])
        for inputs in (fast_input(seed=11), fast_input(seed=11), fast_input(seed=12))
    )
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_white_mask_pixels_are_repainted_and_black_ones_kept(
    client: TestClient, auth: dict[str, str]
) -> None:
    """Random weights cannot reproduce the kept half (the trained UNet learns that; nothing
    is pasted back), so the test checks what the model is given: the image only through
    its black-masked pixels. Changing pixels under the white half changes nothing;
    changing pixels under the black half changes the result."""
    original = noise_image(64, 64, seed=5)
    pixels = np.asarray(original)
    under_white = pixels.copy()
    under_white[:, 36:] = 255 - under_white[:, 36:]
    under_black = pixels.copy()
    under_black[:, :28] = 255 - under_black[:, :28]

    def inpaint(picture: np.ndarray) -> np.ndarray:
        body = predict(
            client, auth, INPAINT_REF, fast_input(image=data_uri(Image.fromarray(picture)))
        )
        return np.asarray(output_images(client, body)[0])

    result = inpaint(pixels)
    assert np.array_equal(inpaint(under_white), result)
    assert not np.array_equal(inpaint(under_black), result)


def test_a_mask_that_is_not_an_image_fails_the_prediction(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(
        client, auth, INPAINT_REF, fast_input(mask="data:image/png;base64,bm90IGFuIGltYWdl")
    )
    assert body["status"] == "failed"
    assert "mask" in body["error"]


def test_more_than_four_outputs_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/replicate/v1/predictions",
        json={"version": INPAINT_REF, "input": fast_input(num_outputs=5)},
        headers=auth,
    )
    assert response.status_code == 422, response.text
