"""What the two Flux LoRA models check at create, beyond their schemas."""

from __future__ import annotations

from typing import Any

from repligate.errors import InvalidField
from repligate.runners import flux_lora


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    problems = []
    # Refused at create rather than failing the run: the form is known from the string.
    # (The Hub forms are recognised by huggingface.co; a server pointed at another hub_url
    # also accepts file URLs on it at run time.)
    lora = flux_lora.invalid_field(values.get("hf_lora"))
    if lora is not None:
        problems.append(lora)
    # FluxImg2ImgPipeline runs steps - int(steps * (1 - strength)) steps: none only at 0.
    if values.get("image") and values["prompt_strength"] <= 0:
        problems.append(
            InvalidField(
                "number_gt",
                "input.prompt_strength",
                "With an image, a prompt_strength of 0 runs no denoising step: use more than 0",
            )
        )
    return problems
