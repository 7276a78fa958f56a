"""andreasjansson/stable-diffusion-animation: schema and input validation; no runner yet."""

from repligate.models.spec import DIFFUSERS, ModelSpec

MODEL = ModelSpec(
    owner="andreasjansson",
    name="stable-diffusion-animation",
    version="ca1f5e306e5721e19c473e0d094e6603f0456fe759c10715fcd6c1b79242d4a5",
    version_created_at="2022-09-07T00:00:00Z",
    description="Animate Stable Diffusion by interpolating between two prompts",
    requires=DIFFUSERS,
    default_weights="CompVis/stable-diffusion-v1-4",
)
