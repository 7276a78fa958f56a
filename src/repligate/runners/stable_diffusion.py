"""Stable Diffusion 2.x runners: text-to-image, image-to-image and inpainting.

What the three share lives in ``StableDiffusionRunner``: loading (through the pipeline
cache, with modules shared between pipelines of one weights source, so stable-diffusion and
stable-diffusion-img2img load SD 2.1 once), a fresh scheduler per prediction, the seed, the
progress/cancel callback, the safety checker and PNG outputs named ``out-{i}.png``.
Each subclass says which diffusers pipeline it uses and how inputs become its arguments.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

from repligate.runners import safety, sampling, schedulers
from repligate.runners.base import RunContext, RunnerEnv
from repligate.storage import encode

if TYPE_CHECKING:
    from PIL.Image import Image

    from repligate.events import OutputFile
    from repligate.models.spec import ModelSpec

# Per worker thread and loaded pipeline: a pipeline object around its shared modules,
# kept between predictions (building one costs about a millisecond, as much as a small
# prediction's whole HTTP round trip); only its scheduler, which keeps per-call state,
# is new for each prediction. Weakly keyed by the loaded pipeline: when the cache lets
# that go, its wrappers go with it.
_wrappers = threading.local()

# diffusers 0.10 (the img2img original's) floored input sizes to this multiple; today's
# image processor floors to the VAE factor (8) instead.
IMG2IMG_SIZE_MULTIPLE = 32


class StableDiffusionRunner:
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"

    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    def _load(self) -> Any:
        import diffusers

        pipeline_class = getattr(diffusers, self.pipeline_class_name)

        def load(source: str) -> Any:
            def from_pretrained() -> Any:
                # The safety checker runs separately (runners/safety.py): each model
                # decides whether flagged images are dropped or blackened.
                pipe = pipeline_class.from_pretrained(
                    source,
                    dtype=self.env.device.dtype,
                    safety_checker=None,
                    requires_safety_checker=False,
                )
                return pipe.to(self.env.device.name)

            return self.env.modules.load(source, pipeline_class, from_pretrained)

        return self.env.weights.load(self.spec, load)

    def pipeline(self) -> Any:
        return self.env.pipelines.get(self.spec.key, self._load)

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        base = self.pipeline()
        seed = sampling.start(self.env, self.spec, inputs.get("seed"), ctx)
        # This thread's pipeline object around the shared modules, with a scheduler (which
        # keeps per-call state) new for every prediction: none leaks into the next one.
        pipe = _thread_pipeline(base)
        pipe.scheduler = schedulers.make(inputs["scheduler"], base.scheduler.config)
        count = inputs["num_outputs"]
        negative = inputs.get("negative_prompt")
        result = pipe(
            prompt=[inputs["prompt"]] * count,
            negative_prompt=[negative] * count if negative else None,
            guidance_scale=inputs["guidance_scale"],
            num_inference_steps=inputs["num_inference_steps"],
            generator=sampling.generator(seed),
            callback_on_step_end=sampling.step_callback(ctx, self.env.threads),
            **self.pipeline_arguments(inputs),
        )
        return self.outputs(list(result.images), inputs, ctx)

    def pipeline_arguments(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The model's own pipeline arguments (sizes, images, strength)."""
        return {"width": inputs["width"], "height": inputs["height"]}

    def outputs(
        self, images: list[Image], inputs: dict[str, Any], ctx: RunContext
    ) -> list[OutputFile]:
        """Flagged images are left out (names keep gaps); all flagged fails."""
        disabled = bool(inputs.get("disable_safety_checker"))
        kept = safety.kept_images(self.env.safety, images, ctx, disabled=disabled)
        return safety.png_outputs(kept, self.env.png_compress_level)


def _thread_pipeline(base: Any) -> Any:
    kept: weakref.WeakKeyDictionary[Any, Any] | None = getattr(_wrappers, "kept", None)
    if kept is None:
        kept = _wrappers.kept = weakref.WeakKeyDictionary()
    pipe = kept.get(base)
    if pipe is None:
        pipe = type(base)(**base.components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        kept[base] = pipe
    return pipe


class StableDiffusionTextToImageRunner(StableDiffusionRunner):
    """stability-ai/stable-diffusion: SD 2.1 text-to-image."""


class StableDiffusionInpaintRunner(StableDiffusionRunner):
    """stability-ai/stable-diffusion-inpainting: SD 2 inpainting (9-channel UNet).

    Image and mask are resized to width x height; white mask pixels are repainted, black
    ones kept (the pipeline binarises the mask at 0.5). Nothing is pasted back: outside
    the mask the model itself reproduces the image, as in the original."""

    pipeline_class_name = "StableDiffusionInpaintPipeline"

    def pipeline_arguments(self, inputs: dict[str, Any]) -> dict[str, Any]:
        size = (inputs["width"], inputs["height"])
        return {
            "image": inputs["image"].image().resize(size),
            "mask_image": inputs["mask"].image().resize(size),
            "width": inputs["width"],
            "height": inputs["height"],
        }


class StableDiffusionImageToImageRunner(StableDiffusionRunner):
    """stability-ai/stable-diffusion-img2img: SD 2.1 image-to-image.

    No resizing to a fixed size: the output keeps the input's size floored to a multiple
    of 32, as diffusers 0.10's preprocessing did for the original (LANCZOS). diffusers 0.42
    would floor to 8 only; we floor to 32 ourselves, so a 100x76 input gives 96x64 as on
    Replicate. Flagged images come back black; the prediction never fails for NSFW."""

    pipeline_class_name = "StableDiffusionImg2ImgPipeline"

    def pipeline_arguments(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": floor_to_multiple(inputs["image"].image(), IMG2IMG_SIZE_MULTIPLE),
            "strength": inputs["prompt_strength"],
        }

    def outputs(
        self, images: list[Image], inputs: dict[str, Any], ctx: RunContext
    ) -> list[OutputFile]:
        images = safety.blacken_flagged(images, self.env.safety.flags(images), ctx)
        level = self.env.png_compress_level
        return [encode.png(image, f"out-{i}.png", level) for i, image in enumerate(images)]


def floor_to_multiple(image: Image, multiple: int) -> Image:
    """The image resized (LANCZOS) to its size floored to ``multiple``; unchanged if it
    already fits."""
    from PIL import Image as PILImage

    width, height = (side - side % multiple for side in image.size)
    if width == 0 or height == 0:
        raise ValueError(
            f"image: the image is {image.width}x{image.height}; both sides must be at least "
            f"{multiple} pixels"
        )
    if (width, height) == image.size:
        return image
    return image.resize((width, height), resample=PILImage.Resampling.LANCZOS)
