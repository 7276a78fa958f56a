"""lucataco/animate-diff: AnimateDiff motion modules on personalised SD 1.5 checkpoints."""

from repligate.models.spec import DIFFUSERS, ModelSpec
from repligate.runners.animate_diff import AnimateDiffRunner

MODEL = ModelSpec(
    owner="lucataco",
    name="animate-diff",
    version="beecf59c4aee8d81bf04f0381033dfa10dc16e845b4ae00d281e2fa377e48a9f",
    version_created_at="2023-09-24T00:00:00Z",
    description="Animate Your Personalized Text-to-Image Diffusion Models",
    requires=DIFFUSERS,
    default_weights="stable-diffusion-v1-5/stable-diffusion-v1-5",
    runner=AnimateDiffRunner,
)
