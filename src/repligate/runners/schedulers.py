"""Schedulers by Replicate's names, each built fresh from the pipeline's original config."""

from __future__ import annotations

from typing import Any

# Replicate name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    # Few steps crash PNDM without skip_prk_steps; the real SD configs set it too.
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "KLMS": ("LMSDiscreteScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}


def make(name: str, base_config: Any) -> Any:
    """A new scheduler named as Replicate names it, from ``base_config`` (the pipeline's
    config as loaded, so prediction_type, betas and offsets are kept)."""
    import diffusers

    class_name, extra = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(base_config, **extra)
