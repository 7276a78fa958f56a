"""The Stable Diffusion safety checker (CompVis' CLIP concept filter) for the SD family.

One checker per server, loaded on first use from ``<REPLIGATE_WEIGHTS_DIR>/safety-checker/``
(``save_pretrained`` layout: ``config.json`` + weights of diffusers'
``StableDiffusionSafetyChecker`` and a ``preprocessor_config.json`` for transformers'
``CLIPImageProcessor``) when that directory exists, else the hub repo
``CompVis/stable-diffusion-safety-checker``. When neither loads, the server logs ONCE that
it runs without a safety checker and carries on: every image passes. The operator setting
``safety_checker`` (env ``REPLIGATE_SAFETY_CHECKER=false``) turns it off server-wide.

API for runners (SD, SD inpainting, SD img2img, SDXL)::

    from repligate.runners import safety

    flags = env.safety.flags(images)              # list[bool], one per PIL image;
                                                  # all False when off or unavailable
    kept = safety.drop_flagged(images, flags, ctx)  # [(index, image)] of the clean ones;
        # logs "NSFW content detected in image {i}" per flagged image and raises
        # NSFWContentDetected (the prediction fails with NSFW_ERROR) when none is left
    kept = safety.kept_images(env.safety, images, ctx, disabled=...)  # the same, or all
                                                  # when the input disables the checker
    images = safety.blacken_flagged(images, flags, ctx)  # flagged ones -> black images
    outputs = safety.png_outputs(kept, env.png_compress_level)  # out-{i}.png, gaps kept

Which behaviour each model has (research/models-1.md): stable-diffusion, sdxl and
stable-diffusion-inpainting drop flagged images (names keep gaps: out-0, out-2) and fail
when all are flagged; inpainting honours ``disable_safety_checker`` (skip ``flags``);
img2img returns black images instead and never fails.

``env.safety`` is a ``LazySafetyChecker``; ``SafetyChecker`` is the loaded model itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repligate.errors import PredictionFailure
from repligate.events import Log, OutputFile
from repligate.storage import encode

if TYPE_CHECKING:
    from PIL.Image import Image

    from repligate.runners.base import RunContext
    from repligate.runners.device import DeviceChoice

log = logging.getLogger(__name__)

HUB_REPO = "CompVis/stable-diffusion-safety-checker"
LOCAL_DIR_NAME = "safety-checker"
NSFW_ERROR = "NSFW content detected. Try running it again, or try a different prompt."
# What diffusers logged when it blackened images (the img2img original's behaviour).
BLACKENED_WARNING = (
    "Potential NSFW content was detected in one or more images. A black image will be "
    "returned instead. Try again with a different prompt and/or seed."
)


class NSFWContentDetected(PredictionFailure):
    """Every image of a prediction was flagged; the prediction fails with NSFW_ERROR."""

    def __init__(self) -> None:
        super().__init__(NSFW_ERROR)


class SafetyChecker:
    """A loaded checker: the CLIP vision model with its concept embeddings, and the image
    processor that turns PIL images into its input."""

    def __init__(self, model: Any, feature_extractor: Any, device: DeviceChoice) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.device = device

    @classmethod
    def load(cls, source: str, device: DeviceChoice) -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )

        model: Any = StableDiffusionSafetyChecker.from_pretrained(source, dtype=device.dtype)
        model.to(device.name).eval()
        return cls(model, image_processor_class().from_pretrained(source), device)

    def flags(self, images: Sequence[Image]) -> list[bool]:
        """True for each image the checker considers NSFW."""
        if not images:
            return []
        import numpy as np
        import torch

        clip_input = self.feature_extractor(list(images), return_tensors="pt").pixel_values
        clip_input = clip_input.to(self.device.name, dtype=self.device.dtype)
        # forward() also blackens flagged arrays in place; we only keep its verdicts, and
        # each runner decides what to do with them (drop or blacken).
        placeholders = [np.zeros((1,)) for _ in images]
        with torch.no_grad():
            _, has_nsfw = self.model(clip_input=clip_input, images=placeholders)
        return [bool(flag) for flag in has_nsfw]


def image_processor_class() -> Any:
    """transformers 5's CLIPImageProcessor needs torchvision; without it, the PIL one
    (same preprocessing, and no fallback warning on every load)."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


class LazySafetyChecker:
    """The server's checker: loaded once, on first use; ``flags`` is all False when the
    operator turned it off or its weights could not be loaded (logged once)."""

    def __init__(
        self, weights_dir: Path | None, device: DeviceChoice | None, *, enabled: bool = True
    ) -> None:
        self.weights_dir = weights_dir
        self.device = device
        self.enabled = enabled and device is not None
        self._lock = threading.Lock()
        self._loaded = False
        self._checker: SafetyChecker | None = None

    @classmethod
    def disabled(cls) -> LazySafetyChecker:
        return cls(None, None, enabled=False)

    def source(self) -> str:
        if self.weights_dir is not None:
            local = self.weights_dir / LOCAL_DIR_NAME
            if local.is_dir():
                return str(local)
        return HUB_REPO

    def checker(self) -> SafetyChecker | None:
        if not self.enabled:
            return None
        with self._lock:
            if not self._loaded:
                self._checker = self._load()
                self._loaded = True
            return self._checker

    def flags(self, images: Sequence[Image]) -> list[bool]:
        checker = self.checker()
        if checker is None:
            return [False] * len(images)
        return checker.flags(images)

    def _load(self) -> SafetyChecker | None:
        assert self.device is not None
        source = self.source()
        try:
            checker = SafetyChecker.load(source, self.device)
        except Exception as exc:
            # A server without the checker's weights still serves: say so once, loudly.
            log.warning(
                "Running WITHOUT a safety checker: loading %r failed (%s: %s). Put "
                "CompVis/stable-diffusion-safety-checker at $REPLIGATE_WEIGHTS_DIR/%s, or "
                "set REPLIGATE_SAFETY_CHECKER=false to silence this.",
                source,
                type(exc).__name__,
                exc,
                LOCAL_DIR_NAME,
            )
            return None
        log.info("safety checker loaded from %s", source)
        return checker


def drop_flagged(
    images: Sequence[Image], flags: Sequence[bool], ctx: RunContext
) -> list[tuple[int, Image]]:
    """The clean images with their batch index; raises NSFWContentDetected if none."""
    kept = []
    for index, (image, flagged) in enumerate(zip(images, flags, strict=True)):
        if flagged:
            ctx.emit(Log(f"NSFW content detected in image {index}"))
        else:
            kept.append((index, image))
    if not kept:
        raise NSFWContentDetected()
    return kept


def kept_images(
    checker: LazySafetyChecker, images: Sequence[Image], ctx: RunContext, *, disabled: bool
) -> list[tuple[int, Image]]:
    """What the models that drop flagged images share: every image when the prediction
    disabled the checker, else the clean ones (see ``drop_flagged``)."""
    if disabled:
        return list(enumerate(images))
    return drop_flagged(images, checker.flags(images), ctx)


def blacken_flagged(
    images: Sequence[Image], flags: Sequence[bool], ctx: RunContext | None = None
) -> list[Image]:
    """Each flagged image replaced by a black one of the same size and mode."""
    from PIL import Image as PILImage

    result = [
        PILImage.new(image.mode, image.size) if flagged else image
        for image, flagged in zip(images, flags, strict=True)
    ]
    if ctx is not None and any(flags):
        ctx.emit(Log(BLACKENED_WARNING))
    return result


def png_outputs(indexed: Sequence[tuple[int, Image]], compress_level: int) -> list[OutputFile]:
    """``out-{i}.png`` for each (batch index, image): dropped images leave gaps."""
    return [encode.png(image, f"out-{i}.png", compress_level) for i, image in indexed]
