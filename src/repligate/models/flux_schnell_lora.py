"""lucataco/flux-schnell-lora: FLUX.1 text-to-image and image-to-image with a LoRA."""

from repligate.models.flux_common import check_input
from repligate.models.spec import DIFFUSERS_WITH_PEFT, ModelSpec
from repligate.runners.flux import FluxSchnellRunner

MODEL = ModelSpec(
    owner="lucataco",
    name="flux-schnell-lora",
    version="2a6b576af31790b470f0a8442e1e9791213fa13799cbb65a9fc1436e96389574",
    version_created_at="2024-10-11T00:00:00Z",
    description="FLUX.1-Schnell LoRA Explorer",
    requires=DIFFUSERS_WITH_PEFT,
    runner=FluxSchnellRunner,
    check_input=check_input,
    default_weights="black-forest-labs/FLUX.1-schnell",
)
