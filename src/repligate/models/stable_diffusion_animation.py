"""andreasjansson/stable-diffusion-animation: an animation between prompts, as a GIF or MP4."""

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.animation import StableDiffusionAnimationRunner


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    """prompt_strength has no bounds in the schema, but is the share of the steps each key
    frame runs on its own: outside [0, 1] it would index the step list backwards."""
    strength = values["prompt_strength"]
    if strength < 0:
        return [
            InvalidField(
                "number_gte", "input.prompt_strength", "Must be greater than or equal to 0"
            )
        ]
    if strength > 1:
        return [
            InvalidField("number_lte", "input.prompt_strength", "Must be less than or equal to 1")
        ]
    return []


MODEL = ModelSpec(
    owner="andreasjansson",
    name="stable-diffusion-animation",
    version="ca1f5e306e5721e19c473e0d094e6603f0456fe759c10715fcd6c1b79242d4a5",
    version_created_at="2022-09-07T00:00:00Z",
    description="Animate Stable Diffusion by interpolating between two prompts",
    requires=DIFFUSERS,
    default_weights="CompVis/stable-diffusion-v1-4",
    runner=StableDiffusionAnimationRunner,
    check_input=check_input,
)
