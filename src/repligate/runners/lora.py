"""Trained additions applied to shared, loaded modules for one call, then taken back.

- LoRA in the attention-processor format that Replicate's SDXL trainer (cog-sdxl
  ``trainer_pti.py``, ``unet_attn_processors_state_dict``) writes:
  ``<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight``. diffusers 0.42 has no
  LoRAAttnProcessor any more, so the keys are renamed to PEFT's (``<module>.to_q.lora_A``)
  and loaded with the UNet's ``load_lora_adapter``; ``unload_lora`` removes the layers,
  leaving the UNet's own modules as they were.
- Textual-inversion vectors (the trainer's ``embeddings.pti``): new tokens ``<s0>``,
  ``<s1>``… The shared tokenizer is never changed (the call gets a copy with the tokens
  added); the text encoder's input embedding is swapped for a larger copy and swapped back.
  The copy keeps every existing row, so a concurrent call that never uses the new ids sees
  the same embeddings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


class LoraFormatError(ValueError):
    """The LoRA file is not in a format this server reads; the message says why."""


def peft_from_attn_processors(tensors: dict[str, Any], prefix: str = "unet") -> dict[str, Any]:
    """``<module>.processor.to_q_lora.down.weight`` -> ``unet.<module>.to_q.lora_A.weight``
    (down is lora_A, up is lora_B; the old processors had no alpha, i.e. scaling 1)."""
    converted: dict[str, Any] = {}
    for key, tensor in tensors.items():
        head, sep, tail = key.partition(".processor.")
        parts = tail.split(".")
        if not sep or len(parts) != 3 or not parts[0].endswith("_lora"):
            raise LoraFormatError(f"unexpected LoRA key {key!r}")
        projection, direction, _ = parts
        target = _PROJECTIONS.get(projection.removesuffix("_lora"))
        if target is None or direction not in ("down", "up"):
            raise LoraFormatError(f"unexpected LoRA key {key!r}")
        side = "lora_A" if direction == "down" else "lora_B"
        converted[f"{prefix}.{head}.{target}.{side}.weight"] = tensor
    if not converted:
        raise LoraFormatError("the LoRA file holds no tensors")
    return converted


@contextmanager
def applied_lora(unet: Any, tensors: dict[str, Any], adapter_name: str) -> Iterator[None]:
    """The LoRA loaded into ``unet`` (shared with other pipelines) for the block; the
    pipeline's ``cross_attention_kwargs={"scale": s}`` scales it, as the original did."""
    state_dict = peft_from_attn_processors(tensors)
    unet.load_lora_adapter(state_dict, prefix="unet", adapter_name=adapter_name)
    try:
        yield
    finally:
        # Removes the LoRA layers: the UNet's own modules are back, untouched.
        unet.unload_lora()


@contextmanager
def added_embeddings(tokenizer: Any, text_encoder: Any, vectors: Any) -> Iterator[Any]:
    """Yield a copy of ``tokenizer`` that knows ``<s0>``…``<s{n-1}>``, while
    ``text_encoder`` embeds them as ``vectors`` (n x hidden); both restored after."""
    import torch

    tokens = [f"<s{i}>" for i in range(vectors.shape[0])]
    call_tokenizer = copy.deepcopy(tokenizer)
    # Special tokens are never split nor lower-cased, as the trainer added them.
    call_tokenizer.add_tokens(tokens, special_tokens=True)
    ids = call_tokenizer.convert_tokens_to_ids(tokens)
    original = text_encoder.get_input_embeddings()
    weight = original.weight
    if vectors.shape[1] != weight.shape[1]:
        raise LoraFormatError(
            f"the embeddings are {vectors.shape[1]} wide, the text encoder's {weight.shape[1]}"
        )
    rows = max(weight.shape[0], max(ids) + 1)
    larger = torch.nn.Embedding(rows, weight.shape[1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        larger.weight[: weight.shape[0]] = weight
        larger.weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
    larger.requires_grad_(False)
    text_encoder.set_input_embeddings(larger)
    try:
        yield call_tokenizer
    finally:
        text_encoder.set_input_embeddings(original)
