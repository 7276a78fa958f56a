"""lucataco/flux-dev-lora: FLUX.1 text-to-image and image-to-image with a LoRA."""

from repligate.models.flux_common import check_input
from repligate.models.spec import DIFFUSERS_WITH_PEFT, ModelSpec
from repligate.runners.flux import FluxDevRunner

MODEL = ModelSpec(
    owner="lucataco",
    name="flux-dev-lora",
    version="091495765fa5ef2725a175a57b276ec30dc9d39c22d30410f2ede68a3eab66b3",
    version_created_at="2024-10-11T00:00:00Z",
    description="FLUX.1-Dev LoRA Explorer",
    requires=DIFFUSERS_WITH_PEFT,
    runner=FluxDevRunner,
    check_input=check_input,
    default_weights="black-forest-labs/FLUX.1-dev",
)
