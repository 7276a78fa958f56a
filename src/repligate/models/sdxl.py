"""stability-ai/sdxl: SDXL 1.0 base (+ refiner) text-to-image, img2img and inpainting."""

from __future__ import annotations

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.sampling import too_few_steps
from repligate.runners.sdxl import REFINER_STRENGTH, StableDiffusionXLRunner


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    """What the schema cannot say, refused at create instead of failing in the pipeline."""
    return [*_sizes(values), *_steps(values)]


def _sizes(values: dict[str, Any]) -> list[InvalidField]:
    """width/height have no bounds in the schema, but the pipeline needs positive multiples
    of 8. They are checked only where they are used: img2img ignores them."""
    if values.get("image") and not values.get("mask"):
        return []
    return [
        InvalidField("multiple_of", f"input.{name}", "Must be a positive multiple of 8")
        for name in ("width", "height")
        if values[name] <= 0 or values[name] % 8
    ]


def _steps(values: dict[str, Any]) -> list[InvalidField]:
    """A pass that runs no step fails deep in the pipeline (Replicate's model too): the
    base given an image, and base_image_refiner's refiner (on refine_steps, else on
    num_inference_steps, as the runner does)."""
    problems = []
    if values.get("image"):
        problems.append(
            too_few_steps(
                values["num_inference_steps"],
                values["prompt_strength"],
                steps_field="num_inference_steps",
                strength_field="prompt_strength",
                when="With an image",
            )
        )
    if values["refine"] == "base_image_refiner":
        name = "refine_steps" if values.get("refine_steps") else "num_inference_steps"
        problems.append(
            too_few_steps(
                values[name],
                REFINER_STRENGTH,
                steps_field=name,
                strength_field=None,
                when="With refine: base_image_refiner",
            )
        )
    return [problem for problem in problems if problem is not None]


MODEL = ModelSpec(
    owner="stability-ai",
    name="sdxl",
    version="7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
    version_created_at="2023-11-07T00:00:00Z",
    description="A text-to-image generative AI model that creates beautiful images",
    requires=DIFFUSERS,
    default_weights="stabilityai/stable-diffusion-xl-base-1.0",
    runner=StableDiffusionXLRunner,
    check_input=check_input,
)
