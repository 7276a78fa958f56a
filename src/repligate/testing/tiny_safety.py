"""A tiny safety checker whose verdict tests choose: flag every image, none, or by
brightness. Written in the layout ``runners/safety.py`` loads from
``<weights_dir>/safety-checker/`` (diffusers' ``StableDiffusionSafetyChecker`` and a
``CLIPImageProcessor``).

Random CLIP weights would flag at random, so the vision model is set by hand to measure
brightness: each 32-px patch token is ``[m, -m, 1, -1, 0, ...]`` where ``m`` is the patch's
mean normalised pixel value (zero-mean across dimensions, so every LayerNorm keeps its
direction); attention is uniform (zero queries and keys), so the class token becomes the
mean of the patch tokens; the MLP adds nothing. The image embedding's cosine with the
axis ``[1, -1, 0, ...]`` (see :func:`brightness_scores`) grows with the image's brightness,
and the checker flags an image when that cosine minus the concept's threshold is above 0
(diffusers rounds the difference to 3 decimals first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

_HIDDEN = 8
_PATCH = 32
_IMAGE = 224
# Cosines lie in [-1, 1]: a threshold of 2 never flags, -2 always does.
_NEVER, _ALWAYS = 2.0, -2.0


def safety_checker(
    target: Path,
    flag: bool = False,
    *,
    brighter_than: float | None = None,
    darker_than: float | None = None,
) -> None:
    """Write a checker that flags every image (``flag=True``), none (``False``), or those
    whose :func:`brightness_scores` value is above ``brighter_than`` / below
    ``darker_than``."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    from repligate.runners.safety import image_processor_class

    config = CLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": _HIDDEN,
            "intermediate_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": _HIDDEN,
            "intermediate_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": _IMAGE,
            "patch_size": _PATCH,
        },
        projection_dim=_HIDDEN,
    )
    model = StableDiffusionSafetyChecker(config)
    axis = torch.zeros(_HIDDEN)
    axis[0], axis[1] = 1.0, -1.0
    with torch.no_grad():
        _make_brightness_meter(model)
        model.visual_projection.weight.copy_(torch.eye(_HIDDEN))
        model.special_care_embeds.copy_(axis.expand(3, -1))
        model.special_care_embeds_weights.fill_(_NEVER)
        model.concept_embeds.copy_(axis.expand(17, -1))
        model.concept_embeds_weights.fill_(_ALWAYS if flag else _NEVER)
        if brighter_than is not None:
            model.concept_embeds_weights[0] = brighter_than
        if darker_than is not None:
            # cos(-axis) - w > 0  <=>  cos(axis) < -w
            model.concept_embeds[1] = -axis
            model.concept_embeds_weights[1] = -darker_than
    model.save_pretrained(target)
    image_processor_class()().save_pretrained(target)


def brightness_scores(directory: Path, images: Sequence[Image]) -> list[float]:
    """What a checker written by :func:`safety_checker` compares with its thresholds."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
        cosine_distance,
    )

    from repligate.runners.safety import image_processor_class

    model = StableDiffusionSafetyChecker.from_pretrained(directory).eval()
    processor = image_processor_class().from_pretrained(directory)
    pixels = processor(list(images), return_tensors="pt")
    axis = torch.zeros(1, _HIDDEN)
    axis[0, 0], axis[0, 1] = 1.0, -1.0
    with torch.no_grad():
        embeds = model.visual_projection(model.vision_model(pixels.pixel_values)[1])
        return [float(value) for value in cosine_distance(embeds, axis)[:, 0]]


def _make_brightness_meter(model: object) -> None:
    import torch

    vision = model.vision_model  # type: ignore[attr-defined]
    # transformers 4 nests the transformer one level deeper than 5 does.
    vision = getattr(vision, "vision_model", vision)
    for parameter in vision.parameters():
        parameter.zero_()
    patch = vision.embeddings.patch_embedding.weight  # (hidden, 3, patch, patch)
    patch[0].fill_(1.0 / (3 * _PATCH * _PATCH))
    patch[1].fill_(-1.0 / (3 * _PATCH * _PATCH))
    positions = vision.embeddings.position_embedding.weight  # (1 + patches, hidden)
    positions[1:, 2], positions[1:, 3] = 1.0, -1.0
    # Keep every LayerNorm a plain normalisation, so directions pass through unchanged.
    for norm in (vision.pre_layrnorm, vision.post_layernorm):
        norm.weight.fill_(1.0)
    for layer in vision.encoder.layers:
        layer.layer_norm1.weight.fill_(1.0)
        layer.layer_norm2.weight.fill_(1.0)
        layer.self_attn.v_proj.weight.copy_(torch.eye(_HIDDEN))
        layer.self_attn.out_proj.weight.copy_(torch.eye(_HIDDEN))
