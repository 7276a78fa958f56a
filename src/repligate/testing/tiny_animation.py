"""Tiny random weights for andreasjansson/stable-diffusion-animation: a Stable Diffusion
1.x pipeline (PNDM, epsilon prediction, as CompVis/stable-diffusion-v1-4 ships) and a
tiny FILM network in the layout ``runners/film.py`` loads (``film-net/``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Narrow and shallow: the real code paths, a few milliseconds per pass at 64 px. Seven
# pyramid levels as the real Style model, so sides stay multiples of 64.
TINY_FILM: dict[str, Any] = {
    "pyramid_levels": 7,
    "fusion_pyramid_levels": 5,
    "specialized_levels": 3,
    "sub_levels": 4,
    "filters": 2,
    "flow_convs": (1, 1, 1, 1),
    "flow_filters": (4, 4, 4, 4),
}


def sd1_scheduler() -> Any:
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def stable_diffusion_v1(target: Path, seed: int = 20) -> None:
    from diffusers import StableDiffusionPipeline

    from repligate.testing import tiny_weights

    pipe: Any = StableDiffusionPipeline(
        vae=tiny_weights.vae(seed),
        text_encoder=tiny_weights.clip_text_encoder(seed + 1),
        tokenizer=tiny_weights.clip_tokenizer(),
        unet=tiny_weights.sd_unet(seed + 2, sample_size=64),
        scheduler=sd1_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target)


def film_net(target: Path, seed: int = 30) -> None:
    import torch
    from safetensors.torch import save_file

    from repligate.runners.film import CONFIG_FILE, WEIGHTS_FILE
    from repligate.runners.film_net import FilmConfig, FilmNet

    torch.manual_seed(seed)
    net = FilmNet(FilmConfig(**TINY_FILM))
    target.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in net.state_dict().items()}
    save_file(state, target / WEIGHTS_FILE)
    (target / CONFIG_FILE).write_text(
        json.dumps(FilmConfig(**TINY_FILM).to_dict(), indent=2) + "\n"
    )
