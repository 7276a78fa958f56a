"""stability-ai/stable-diffusion-img2img: Stable Diffusion 2.1 image-to-image."""

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.sampling import too_few_steps
from repligate.runners.stable_diffusion import StableDiffusionImageToImageRunner


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    problem = too_few_steps(
        values["num_inference_steps"],
        values["prompt_strength"],
        steps_field="num_inference_steps",
        strength_field="prompt_strength",
        when="With an image",
    )
    return [problem] if problem else []


MODEL = ModelSpec(
    owner="stability-ai",
    name="stable-diffusion-img2img",
    version="15a3689ee13b0d2616e98820eca31d4c3abcd36672df6afce5cb6feb1d66087d",
    version_created_at="2022-12-17T00:00:00Z",
    description="Generate a new image from an input image with Stable Diffusion",
    requires=DIFFUSERS,
    default_weights="stabilityai/stable-diffusion-2-1",
    runner=StableDiffusionImageToImageRunner,
    check_input=check_input,
)
