"""stability-ai/stable-diffusion: Stable Diffusion 2.1 (768-v) text-to-image."""

from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.stable_diffusion import StableDiffusionTextToImageRunner

MODEL = ModelSpec(
    owner="stability-ai",
    name="stable-diffusion",
    version="ac732df83cea7fff18b8472768c88ad041fa750ff7682a21affe81863cbe77e4",
    version_created_at="2023-07-10T00:00:00Z",
    description="A latent text-to-image diffusion model capable of generating "
    "photo-realistic images given any text input",
    requires=DIFFUSERS,
    default_weights="stabilityai/stable-diffusion-2-1",
    runner=StableDiffusionTextToImageRunner,
)
