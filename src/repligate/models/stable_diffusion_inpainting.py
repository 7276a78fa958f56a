"""stability-ai/stable-diffusion-inpainting: Stable Diffusion 2 inpainting (9-channel UNet)."""

from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.stable_diffusion import StableDiffusionInpaintRunner

MODEL = ModelSpec(
    owner="stability-ai",
    name="stable-diffusion-inpainting",
    version="95b7223104132402a9ae91cc677285bc5eb997834bd2349fa486f53910fd68b3",
    version_created_at="2023-03-30T00:00:00Z",
    description="Fill in masked parts of images with Stable Diffusion",
    requires=DIFFUSERS,
    default_weights="stabilityai/stable-diffusion-2-inpainting",
    runner=StableDiffusionInpaintRunner,
)
