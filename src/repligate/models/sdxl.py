"""stability-ai/sdxl: SDXL 1.0 base (+ refiner) text-to-image, img2img and inpainting."""

from __future__ import annotations

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import ModelSpec
from repligate.runners.sdxl import StableDiffusionXLRunner


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    """width/height have no bounds in the schema, but the pipeline needs positive multiples
    of 8. They are checked only where they are used: img2img ignores them."""
    if values.get("image") and not values.get("mask"):
        return []
    return [
        InvalidField("multiple_of", f"input.{name}", "Must be a positive multiple of 8")
        for name in ("width", "height")
        if values[name] <= 0 or values[name] % 8
    ]


MODEL = ModelSpec(
    owner="stability-ai",
    name="sdxl",
    version="7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
    version_created_at="2023-11-07T00:00:00Z",
    description="A text-to-image generative AI model that creates beautiful images",
    default_weights="stabilityai/stable-diffusion-xl-base-1.0",
    runner=StableDiffusionXLRunner,
    check_input=check_input,
)
