"""lucataco/flux-schnell-lora: schema and input validation; no runner yet."""

from repligate.models.spec import DIFFUSERS_WITH_PEFT, ModelSpec

MODEL = ModelSpec(
    owner="lucataco",
    name="flux-schnell-lora",
    version="2a6b576af31790b470f0a8442e1e9791213fa13799cbb65a9fc1436e96389574",
    version_created_at="2024-10-11T00:00:00Z",
    description="FLUX.1-Schnell LoRA Explorer",
    requires=DIFFUSERS_WITH_PEFT,
    default_weights="black-forest-labs/FLUX.1-schnell",
)
