"""lucataco/flux-schnell-lora and lucataco/flux-dev-lora through diffusers, as their cog
predictors (models-2.md §1-2).

Weights: ``$REPLIGATE_WEIGHTS_DIR/<owner>__<name>/`` in FluxPipeline's save_pretrained
layout, else the Hub repo (black-forest-labs/FLUX.1-schnell or FLUX.1-dev; dev is gated:
its error says to set HF_TOKEN). bf16 on a GPU, as the originals; fp32 on the CPU.

Text-to-image and image-to-image share one set of loaded modules (FluxPipeline, and a
FluxImg2ImgPipeline built around them by runners/components.py). Every prediction gets its
own pipeline object with a fresh scheduler, since a scheduler keeps per-call state.

``hf_lora`` (runners/flux_lora.py) is loaded into the shared transformer for one call and
unloaded after; such a call runs alone on the modules (``ModuleUse``, one per loaded
transformer), so no concurrent prediction sees it and the next one without a LoRA gets the
base weights back exactly.
The originals instead kept the last LoRA loaded; the outputs are the same.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from repligate.events import Log, OutputFile
from repligate.runners import flux_lora, safety, sampling
from repligate.runners.base import RunContext, RunnerEnv
from repligate.runners.module_use import ModuleUse
from repligate.storage import encode

if TYPE_CHECKING:
    from collections.abc import Iterator

    from PIL.Image import Image

    from repligate.models.spec import ModelSpec

# aspect_ratio -> (width, height), the originals' table.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
# The originals shrink an input image so its long side is at most this, each side rounded
# up to a multiple of 16 (nearest-neighbour), before the pipeline resizes it again.
IMG2IMG_MAX_SIDE = 1440
IMG2IMG_MULTIPLE = 16
_ADAPTER = "hf_lora"
_uses: weakref.WeakKeyDictionary[Any, ModuleUse] = weakref.WeakKeyDictionary()
_uses_lock = threading.Lock()


class FluxRunner:
    # As each original passes it to the pipeline.
    max_sequence_length: ClassVar[int] = 512
    # None: the input's guidance_scale; schnell's original fixes it at 0.
    fixed_guidance_scale: ClassVar[float | None] = None

    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    # -- loading ---------------------------------------------------------------------

    def dtype(self) -> Any:
        import torch

        return torch.float32 if self.env.device.name == "cpu" else torch.bfloat16

    def _pipeline(self, class_name: str, key: str) -> Any:
        import diffusers

        pipeline_class = getattr(diffusers, class_name)

        def load(source: str) -> Any:
            def from_pretrained() -> Any:
                pipe = pipeline_class.from_pretrained(source, dtype=self.dtype())
                return pipe.to(self.env.device.name)

            return self.env.modules.load(source, pipeline_class, from_pretrained)

        return self.env.pipelines.get(key, lambda: self.env.weights.load(self.spec, load))

    def text_to_image(self) -> Any:
        return self._pipeline("FluxPipeline", self.spec.key)

    def image_to_image(self) -> Any:
        return self._pipeline("FluxImg2ImgPipeline", f"{self.spec.key}/img2img")

    # -- one prediction --------------------------------------------------------------

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> list[OutputFile]:
        image = inputs.get("image")
        loaded = self.image_to_image() if image is not None else self.text_to_image()
        seed = sampling.start(self.env, self.spec, inputs.get("seed"), ctx)
        # Downloaded before taking the modules: a slow download holds up nobody.
        lora = self._lora(inputs.get("hf_lora"), ctx)
        width, height = ASPECT_RATIOS[inputs["aspect_ratio"]]
        call: dict[str, Any] = {"width": width, "height": height}
        if image is not None:
            ctx.emit(Log("img2img mode"))
            # The output follows aspect_ratio, not the input image (whatever the input's
            # description says): the originals never update width/height for an image,
            # and the pipeline resizes the image to them.
            call.update(image=_prepared(image.image()), strength=inputs["prompt_strength"])
        else:
            ctx.emit(Log("txt2img mode"))
        if lora is not None:
            call["joint_attention_kwargs"] = {"scale": inputs["lora_scale"]}
        modules = _module_use(loaded.transformer)
        use = modules.exclusive() if lora is not None else modules.shared()
        with use, ExitStack() as stack:
            if lora is not None:
                stack.enter_context(_adapter(loaded, lora))
            images = self._generate(loaded, call, inputs, seed, ctx)
        kept = safety.kept_images(
            self.env.safety, images, ctx, disabled=inputs["disable_safety_checker"]
        )
        return [
            _encoded(image, index, inputs["output_format"], inputs["output_quality"], self.env)
            for index, image in kept
        ]

    def _lora(self, value: str | None, ctx: RunContext) -> dict[str, Any] | None:
        source = flux_lora.parse(value or "", self.env.hub_url)
        if source is None:
            return None
        if self.env.weights_cache is None:
            raise flux_lora.LoraError(f"{flux_lora.FIELD}: this server has no cache for LoRAs")
        ctx.emit(Log(f"Loading LoRA weights: {source.value}"))
        return flux_lora.load(source, self.env.weights_cache, self.env.fetcher, self.env.hub_url)

    def _generate(
        self,
        loaded: Any,
        call: dict[str, Any],
        inputs: dict[str, Any],
        seed: int,
        ctx: RunContext,
    ) -> list[Image]:
        scheduler = type(loaded.scheduler).from_config(loaded.scheduler.config)
        pipe = type(loaded)(**{**loaded.components, "scheduler": scheduler})
        pipe.set_progress_bar_config(disable=True)
        guidance = self.fixed_guidance_scale
        if guidance is None:
            guidance = inputs["guidance_scale"]
        count = inputs["num_outputs"]
        result = pipe(
            prompt=[inputs["prompt"]] * count,
            guidance_scale=guidance,
            num_inference_steps=inputs["num_inference_steps"],
            max_sequence_length=self.max_sequence_length,
            generator=sampling.generator(seed),
            callback_on_step_end=sampling.step_callback(ctx, self.env.threads),
            **call,
        )
        return list(result.images)


class FluxSchnellRunner(FluxRunner):
    """lucataco/flux-schnell-lora: 1-12 steps, no guidance, 256 T5 tokens."""

    max_sequence_length = 256
    fixed_guidance_scale = 0.0


class FluxDevRunner(FluxRunner):
    """lucataco/flux-dev-lora: guidance_scale is FLUX.1-dev's distilled guidance
    embedding (not classifier-free guidance), 512 T5 tokens."""

    max_sequence_length = 512


def _module_use(transformer: Any) -> ModuleUse:
    """One lock per loaded transformer, whichever model or pipeline class uses it: two
    models whose weights directories are one (runners/components.py) share it too."""
    with _uses_lock:
        use = _uses.get(transformer)
        if use is None:
            use = _uses[transformer] = ModuleUse()
        return use


@contextmanager
def _adapter(pipe: Any, tensors: dict[str, Any]) -> Iterator[None]:
    """The LoRA in the shared transformer (and text encoder, if it has layers for it) for
    the block; unloading removes every LoRA layer, leaving the base modules untouched."""
    try:
        # A copy: diffusers' format conversion pops keys from the dict it is given.
        pipe.load_lora_weights(dict(tensors), adapter_name=_ADAPTER)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        pipe.unload_lora_weights()
        raise flux_lora.LoraError(
            f"{flux_lora.FIELD}: the file is not a Flux LoRA this model can load: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    try:
        yield
    finally:
        pipe.unload_lora_weights()


def _prepared(image: Image) -> Image:
    """As the originals: long side at most 1440, sides rounded up to multiples of 16."""
    from PIL import Image as PILImage

    width, height = image.size
    scale = min(1.0, IMG2IMG_MAX_SIDE / max(width, height))
    width, height = (
        -(-max(1, round(side * scale)) // IMG2IMG_MULTIPLE) * IMG2IMG_MULTIPLE
        for side in (width, height)
    )
    if (width, height) == image.size:
        return image
    return image.resize((width, height), resample=PILImage.Resampling.NEAREST)


def _encoded(
    image: Image, index: int, output_format: str, quality: int, env: RunnerEnv
) -> OutputFile:
    """``out-{i}.{format}``: webp/jpg at ``output_quality``, png losslessly (quality
    unused, as the originals)."""
    name = f"out-{index}.{output_format}"
    if output_format == "webp":
        return encode.webp(image, name, quality)
    if output_format == "jpg":
        return encode.jpeg(image, name, quality)
    return encode.png(image, name, env.png_compress_level)
