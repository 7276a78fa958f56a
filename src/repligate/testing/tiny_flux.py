"""Tiny random-weight FLUX.1 pipelines (schnell and dev), a tiny LoRA for them, and a tiny
Replicate Flux training tarball.

Dimensions follow local-runtime.md §6: the transformer's packed input is 4 x the VAE's 16
latent channels, its rope axes add up to the head width (4 + 4 + 8 = 16), its joint
attention width is the T5 encoder's ``d_model`` and its pooled projection the CLIP
encoder's hidden size. The two models differ as the real ones do: dev embeds the guidance
scale (``guidance_embeds``) and shifts its schedule with the image size; schnell does
neither.
"""

from __future__ import annotations

import io
import string
import tarfile
from pathlib import Path
from typing import Any

_TEXT_DIM = 32  # CLIP hidden size = T5 d_model = the transformer's joint attention width
_LORA_RANK = 4
# Where Replicate's Flux trainer (ostris ai-toolkit) puts the LoRA in its output tarball.
TRAINING_TAR_LORA_PATH = "output/flux_train_replicate/lora.safetensors"


def t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer from an explicit vocabulary: ASCII characters, each alone and
    after the word marker ``▁``; anything else is ``<unk>``."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -3.0), ("\u2581" + char, -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def t5_encoder(seed: int) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=1000,
            d_model=_TEXT_DIM,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
        )
    )


def flux_transformer(seed: int, *, guidance_embeds: bool) -> Any:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=1,  # one head: a 1024 px image is 4096 tokens
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=_TEXT_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )


def flux_vae(seed: int) -> Any:
    """Four blocks (scale factor 8, as the real VAE), 16 latent channels, FLUX's shift and
    scale, no quant convs, and no attention in the middle block."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        # Narrow: decoding a 1024 px image stays about a second on two CPU cores.
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        force_upcast=False,
        # Self-attention over a 128 x 128 latent is most of a 1024 px image's time on CPU.
        mid_block_add_attention=False,
    )


def flux_scheduler(*, dev: bool) -> Any:
    """As the real repos ship it: dev shifts the schedule with the image size, schnell
    does not."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dev:
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def flux_pipeline(seed: int, *, dev: bool) -> Any:
    from diffusers import FluxPipeline

    from repligate.testing.tiny_weights import clip_text_encoder, clip_tokenizer

    return FluxPipeline(
        scheduler=flux_scheduler(dev=dev),
        vae=flux_vae(seed),
        text_encoder=clip_text_encoder(seed + 1),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(seed + 2),
        tokenizer_2=t5_tokenizer(),
        transformer=flux_transformer(seed + 3, guidance_embeds=dev),
    )


def flux_schnell(target: Path, seed: int = 30) -> None:
    """lucataco/flux-schnell-lora: FLUX.1-schnell's layout."""
    flux_pipeline(seed, dev=False).save_pretrained(target)


def flux_dev(target: Path, seed: int = 40) -> None:
    """lucataco/flux-dev-lora: FLUX.1-dev's layout (guidance embedding)."""
    flux_pipeline(seed, dev=True).save_pretrained(target)


BUILDERS = {
    "lucataco__flux-schnell-lora": flux_schnell,
    "lucataco__flux-dev-lora": flux_dev,
}


def lora_tensors(seed: int = 7, strength: float = 1.0) -> dict[str, Any]:
    """A LoRA for the tiny transformer's attention projections in the diffusers /
    ai-toolkit format Replicate's Flux LoRAs use (``transformer.<module>.lora_A.weight``).
    ``lora_B`` is random: a zero one (peft's default) would change nothing."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = flux_transformer(0, guidance_embeds=False)
    transformer.add_adapter(
        LoraConfig(
            r=_LORA_RANK,
            lora_alpha=_LORA_RANK,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    generator = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(transformer)
    return {
        f"transformer.{key}": (torch.randn(value.shape, generator=generator) * strength)
        .to(torch.float32)
        .contiguous()
        for key, value in state.items()
    }


def lora_bytes(seed: int = 7, strength: float = 1.0) -> bytes:
    """One ``.safetensors`` file's bytes, as a Hub or civitai LoRA download would be."""
    from safetensors.torch import save

    return save(lora_tensors(seed, strength), metadata={"format": "pt"})


def write_lora(path: Path, seed: int = 7, strength: float = 1.0) -> Path:
    path.write_bytes(lora_bytes(seed, strength))
    return path


def training_tar_bytes(seed: int = 8, strength: float = 1.0) -> bytes:
    """A tarball shaped as Replicate's Flux LoRA trainer returns it
    (``trained_model.tar``): the LoRA at ``output/flux_train_replicate/lora.safetensors``
    beside the trainer's config."""
    members = {
        TRAINING_TAR_LORA_PATH: lora_bytes(seed, strength),
        "output/flux_train_replicate/config.yaml": b"job: extension\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
