"""Tiny random-weight pipelines, built offline from configs and saved in diffusers'
``save_pretrained`` layout: ``python -m repligate.testing.tiny_weights DIR`` writes
``DIR/<owner>__<name>/`` for every model with a local runner. Point
``REPLIGATE_WEIGHTS_DIR`` at DIR and the server loads them with its real loading code.

The outputs are noise: the weights are random. A marker file says so, and the server
logs it whenever it loads such a directory.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repligate.runners.weights import RANDOM_WEIGHTS_MARKER
from repligate.testing import (
    tiny_animate_diff,
    tiny_animation,
    tiny_flux,
    tiny_object_removal,
    tiny_rembg,
    tiny_safety,
    tiny_sdxl,
)


def clip_tokenizer() -> Any:
    """A byte-level CLIP BPE tokenizer that encodes any text without unknown tokens."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        # transformers 5 reads `vocab`/`merges`; it silently ignores `vocab_file`/`merges_file`
        # and then encodes every text to the same ids, so prompts would change nothing.
        return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)


def clip_text_encoder(seed: int, projection_dim: int | None = None) -> Any:
    """The tiny CLIP text encoder; with ``projection_dim``, the projecting kind SDXL uses as
    its second encoder (its pooled output feeds the UNet's added embeddings)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=projection_dim or 512,  # 512 is the config's default
    )
    if projection_dim:
        return CLIPTextModelWithProjection(config)
    return CLIPTextModel(config)


def vae(seed: int, latent_channels: int = 4, force_upcast: bool = True) -> Any:
    """Four blocks, so the scale factor is 8 as in the real VAEs (a 2-block VAE would make
    768 px a 384 px latent: minutes per image)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        force_upcast=force_upcast,
    )


def sd_unet(seed: int, in_channels: int = 4, sample_size: int = 96) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(1, 2),
        use_linear_projection=True,
        norm_num_groups=8,
        sample_size=sample_size,
        in_channels=in_channels,
    )


def sd2_scheduler(prediction_type: str = "v_prediction") -> Any:
    """The DDIM scheduler as Stable Diffusion 2 ships it: v-prediction for 2.1 (768-v),
    epsilon for the 512 px inpainting model."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def stable_diffusion(target: Path, seed: int = 0) -> None:
    """stability-ai/stable-diffusion: SD 2.1 layout, default size 768 (sample_size 96)."""
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        vae=vae(seed),
        text_encoder=clip_text_encoder(seed + 1),
        tokenizer=clip_tokenizer(),
        unet=sd_unet(seed + 2),
        scheduler=sd2_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target)


def stable_diffusion_inpainting(target: Path, seed: int = 10) -> None:
    """stability-ai/stable-diffusion-inpainting: SD 2 inpainting, a 9-channel UNet (4
    latent + 1 mask + 4 masked-image latent), epsilon prediction, default size 512."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe: Any = StableDiffusionInpaintPipeline(
        vae=vae(seed),
        text_encoder=clip_text_encoder(seed + 1),
        tokenizer=clip_tokenizer(),
        unet=sd_unet(seed + 2, in_channels=9, sample_size=64),
        scheduler=sd2_scheduler(prediction_type="epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "stability-ai__stable-diffusion": stable_diffusion,
    "stability-ai__stable-diffusion-inpainting": stable_diffusion_inpainting,
    # The original loads SD 2.1 as stable-diffusion does: the same tiny weights again.
    "stability-ai__stable-diffusion-img2img": stable_diffusion,
    # Non-flagging; tests that need flags write their own (tiny_safety.safety_checker).
    "safety-checker": tiny_safety.safety_checker,
    "stability-ai__sdxl": tiny_sdxl.sdxl,
    "sujaykhandekar__object-removal": tiny_object_removal.object_removal,
    "cjwbw__rembg": tiny_rembg.u2net,
    "andreasjansson__stable-diffusion-animation": tiny_animation.stable_diffusion_v1,
    "film-net": tiny_animation.film_net,
    "lucataco__animate-diff": tiny_animate_diff.animate_diff,
    **tiny_flux.BUILDERS,
}


def build_all(root: Path) -> list[Path]:
    """Write every tiny pipeline under ``root``; existing ones are rebuilt."""
    written = []
    for key, build in BUILDERS.items():
        target = root / key
        build(target)
        (target / RANDOM_WEIGHTS_MARKER).write_text(
            "Tiny random weights made by repligate.testing.tiny_weights; outputs are noise.\n"
        )
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m repligate.testing.tiny_weights DIR", file=sys.stderr)
        return 2
    for path in build_all(Path(argv[0])):
        print(f"wrote {path}")
    print("These are RANDOM weights: outputs are noise, for trying the API offline.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
