"""Tiny random weights for lucataco/animate-diff, in the layout its runner reads
(runners/animate_diff.py):

    lucataco__animate-diff/
      stable-diffusion-v1-5/          SD 1.5's tokenizer, text encoder, VAE and UNet configs
      motion_modules/mm_sd_v14/       a diffusers MotionAdapter per motion_module value
      motion_modules/mm_sd_v15/
      motion_modules/mm_sd_v15_v2/    (with the motion mid block, as v2 has)
      checkpoints/toonyou_beta3.safetensors, ...
                                      each personalised checkpoint as one file in the
                                      original (CompVis/LDM) key layout, as civitai ships
                                      them: UNet, VAE and a CLIP text encoder of its own

The checkpoints are written by converting diffusers modules back to LDM keys; the runner
reads them with diffusers' ``from_single_file``, the same code that reads the real files.
The UNet mirrors SD 1.5's shape in miniature (cross-attention blocks first, two layers per
block, convolutional projections), and its ``sample_size`` of 8 makes the default size
64 px where SD 1.5's 64 makes it 512.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BASE_DIR = "stable-diffusion-v1-5"
MOTION_DIR = "motion_modules"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS = (
    "toonyou_beta3.safetensors",
    "lyriel_v16.safetensors",
    "rcnzCartoon3d_v10.safetensors",
    "majicmixRealistic_v5Preview.safetensors",
    "realisticVisionV40_v20Novae.safetensors",
)
# The v1 modules have no motion mid block; v2's has one and is trained to 32 frames.
MOTION_MODULES = {"mm_sd_v14": False, "mm_sd_v15": False, "mm_sd_v15_v2": True}

_CHANNELS = (16, 32)
_LAYERS_PER_BLOCK = 2


def sd15_unet(seed: int) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=_CHANNELS,
        layers_per_block=_LAYERS_PER_BLOCK,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        sample_size=8,
    )


def sd15_scheduler() -> Any:
    """The scheduler config SD 1.5's repo ships (the runner replaces it by the original's
    DDIM; it is here so the directory is a whole SD 1.5 pipeline)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )


def motion_adapter(seed: int, mid_block: bool) -> Any:
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(
        block_out_channels=_CHANNELS,
        motion_layers_per_block=_LAYERS_PER_BLOCK,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32 if mid_block else 24,
        use_motion_mid_block=mid_block,
    )


def animate_diff(target: Path, seed: int = 40) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from repligate.testing import tiny_weights

    base: Any = StableDiffusionPipeline(
        vae=tiny_weights.vae(seed),
        text_encoder=tiny_weights.clip_text_encoder(seed + 1),
        tokenizer=tiny_weights.clip_tokenizer(),
        unet=sd15_unet(seed + 2),
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    base.save_pretrained(target / BASE_DIR)
    for index, (name, mid_block) in enumerate(MOTION_MODULES.items()):
        motion_adapter(seed + 10 + index, mid_block).save_pretrained(target / MOTION_DIR / name)
    (target / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(CHECKPOINTS):
        checkpoint_seed = seed + 20 + 3 * index
        state = ldm_checkpoint(
            sd15_unet(checkpoint_seed),
            tiny_weights.vae(checkpoint_seed + 1),
            tiny_weights.clip_text_encoder(checkpoint_seed + 2),
        )
        save_file(state, str(target / CHECKPOINT_DIR / name))


def ldm_checkpoint(unet: Any, vae: Any, text_encoder: Any) -> dict[str, Any]:
    """One state dict in the original Stable Diffusion layout (what civitai files hold)."""
    state = {}
    layers = unet.config.layers_per_block
    with_attention = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    for key, tensor in unet.state_dict().items():
        state["model.diffusion_model." + ldm_unet_key(key, layers, with_attention)] = tensor
    up_blocks = len(vae.config.up_block_types)
    for key, tensor in vae.state_dict().items():
        ldm_key = ldm_vae_key(key, up_blocks)
        if ".mid.attn_1." in ldm_key and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original's attention is 1x1 convolutions
        state["first_stage_model." + ldm_key] = tensor
    for key, tensor in text_encoder.state_dict().items():
        state["cond_stage_model.transformer." + key] = tensor
    return {key: tensor.contiguous() for key, tensor in state.items()}


_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET.get(part, part)}.{tail}"


def ldm_unet_key(key: str, layers: int, up_with_attention: list[bool]) -> str:
    """A diffusers UNet2DConditionModel key in the LDM layout: the inverse of diffusers'
    ``convert_ldm_unet_checkpoint``."""
    prefix, _, tail = key.rpartition(".")
    if prefix in _UNET_FIXED:
        return f"{_UNET_FIXED[prefix]}.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = int(m[1]) * (layers + 1) + int(m[3]) + 1
        rest = _resnet(m[4]) if m[2] == "resnets" else m[4]
        return f"input_blocks.{block}.{0 if m[2] == 'resnets' else 1}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = int(m[1]) * (layers + 1) + int(m[3])
        rest = _resnet(m[4]) if m[2] == "resnets" else m[4]
        return f"output_blocks.{block}.{0 if m[2] == 'resnets' else 1}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1]) * (layers + 1) + layers
        return f"output_blocks.{block}.{2 if up_with_attention[int(m[1])] else 1}.conv.{m[2]}"
    raise ValueError(f"no LDM name for the UNet key {key}")


_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def ldm_vae_key(key: str, up_blocks: int) -> str:
    """A diffusers AutoencoderKL key in the LDM layout: the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{up_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{up_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names
