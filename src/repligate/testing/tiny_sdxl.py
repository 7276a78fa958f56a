"""Tiny random-weight SDXL: the base (two text encoders), the refiner in ``refiner/``, and
trainer tarballs shaped as Replicate's SDXL trainer writes them.

Layout written by :func:`sdxl` (the layout the SDXL runner reads)::

    <dir>/                 StableDiffusionXLPipeline.save_pretrained (the base)
    <dir>/refiner/         StableDiffusionXLImg2ImgPipeline.save_pretrained (the refiner)

Dimensions follow local-runtime.md §5: the UNet's cross-attention width is the two
encoders' hidden sizes added (32 + 32), and its added-embedding input is
``n_time_ids * addition_time_embed_dim + pooled size`` (6 ids for the base, 5 for a
refiner that takes an aesthetic score).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

_TIME_EMBED_DIM = 8
_POOLED_DIM = 32  # projection_dim of text_encoder_2
_LORA_RANK = 4


def sdxl_unet(seed: int, *, refiner: bool = False, sample_size: int = 128) -> Any:
    """sample_size 128 makes the default size 1024 x 1024, as SDXL's."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    time_ids = 5 if refiner else 6
    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 if refiner else 64,
        attention_head_dim=(1, 2),
        use_linear_projection=True,
        norm_num_groups=8,
        sample_size=sample_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_ids * _TIME_EMBED_DIM + _POOLED_DIM,
    )


def sdxl_scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # As stable-diffusion-xl-base-1.0 ships it.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def sdxl(target: Path, seed: int = 10) -> None:
    """stability-ai/sdxl: the base in ``target`` and the refiner in ``target/refiner``."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from repligate.testing.tiny_weights import clip_text_encoder, clip_tokenizer, vae

    tokenizer = clip_tokenizer()
    encoder_2 = clip_text_encoder(seed + 2, projection_dim=_POOLED_DIM)
    # As the fp16-fix VAE the SDXL predictor ships: no upcast needed (and no warning).
    shared_vae = vae(seed, force_upcast=False)
    base: Any = StableDiffusionXLPipeline(
        vae=shared_vae,
        text_encoder=clip_text_encoder(seed + 1),
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=sdxl_unet(seed + 3),
        scheduler=sdxl_scheduler(),
        add_watermarker=False,
    )
    base.save_pretrained(target)
    # Built like the real refiner: encoder 2 only, aesthetic-score time ids.
    refiner: Any = StableDiffusionXLImg2ImgPipeline(
        vae=shared_vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=encoder_2,
        tokenizer_2=tokenizer,
        unet=sdxl_unet(seed + 4, refiner=True),
        scheduler=sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    refiner.save_pretrained(target / "refiner")


def _lora_tensors(unet: Any, seed: int) -> dict[str, Any]:
    """LoRA weights for every attention processor of ``unet``, keyed as the trainer's
    ``unet_attn_processors_state_dict`` keys LoRAAttnProcessor2_0 weights:
    ``<processor>.to_{q,k,v,out}_lora.{down,up}.weight``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn1", "attn2")):
            continue
        for projection, linear in (
            ("to_q", module.to_q),
            ("to_k", module.to_k),
            ("to_v", module.to_v),
            ("to_out", module.to_out[0]),
        ):
            down = torch.randn(_LORA_RANK, linear.in_features, generator=generator)
            up = torch.randn(linear.out_features, _LORA_RANK, generator=generator)
            key = f"{name}.processor.{projection}_lora"
            tensors[f"{key}.down.weight"] = down * 0.5
            tensors[f"{key}.up.weight"] = up * 0.5
    return tensors


def build_sdxl_trainer_tar(path: Path, kind: str = "lora", seed: int = 99) -> Path:
    """A tarball as Replicate's SDXL trainer returns it, for the tiny base of :func:`sdxl`:
    ``lora.safetensors`` (kind "lora") or ``unet.safetensors`` (kind "unet", a whole
    UNet), plus ``embeddings.pti`` (two new tokens ``<s0><s1>`` for both text encoders)
    and ``special_params.json`` mapping ``TOK`` to them."""
    import torch
    from safetensors.torch import save

    if kind not in ("lora", "unet"):
        raise ValueError(f"kind must be 'lora' or 'unet', not {kind!r}")
    unet = sdxl_unet(seed)
    if kind == "lora":
        weights_name, weights = "lora.safetensors", _lora_tensors(unet, seed)
    else:
        weights_name = "unet.safetensors"
        weights = {k: v.contiguous() for k, v in unet.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    embeddings = {
        "text_encoders_0": torch.randn(2, 32, generator=generator),
        "text_encoders_1": torch.randn(2, 32, generator=generator),
    }
    members = {
        weights_name: save(weights),
        "embeddings.pti": save(embeddings),
        "special_params.json": json.dumps({"TOK": "<s0><s1>"}).encode(),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
