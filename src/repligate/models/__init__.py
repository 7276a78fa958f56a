"""The ten models this server knows: one short module each, listed once here."""

from __future__ import annotations

from repligate.models.spec import ModelSpec


def all_models() -> list[ModelSpec]:
    # Imported here, not at module import: runner modules pull in heavy libraries lazily,
    # but listing models must stay cheap for the CLI.
    from repligate.models import (
        animate_diff,
        flux_dev_lora,
        flux_schnell_lora,
        object_removal,
        rembg,
        sdxl,
        stable_diffusion,
        stable_diffusion_animation,
        stable_diffusion_img2img,
        stable_diffusion_inpainting,
    )

    return [
        stable_diffusion.MODEL,
        sdxl.MODEL,
        stable_diffusion_inpainting.MODEL,
        stable_diffusion_img2img.MODEL,
        flux_schnell_lora.MODEL,
        flux_dev_lora.MODEL,
        stable_diffusion_animation.MODEL,
        animate_diff.MODEL,
        object_removal.MODEL,
        rembg.MODEL,
    ]
