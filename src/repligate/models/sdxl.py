"""stability-ai/sdxl: schema and input validation; no runner yet."""

from repligate.models.spec import ModelSpec

MODEL = ModelSpec(
    owner="stability-ai",
    name="sdxl",
    version="7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
    version_created_at="2023-11-07T00:00:00Z",
    description="A text-to-image generative AI model that creates beautiful images",
    default_weights="stabilityai/stable-diffusion-xl-base-1.0",
)
