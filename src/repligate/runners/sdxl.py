"""stability-ai/sdxl through diffusers, as Replicate's cog-sdxl predictor (models-1.md §2).

Weights layout (``$REPLIGATE_WEIGHTS_DIR/stability-ai__sdxl/``)::

    ./           the base, StableDiffusionXLPipeline.save_pretrained layout
                 (default: stabilityai/stable-diffusion-xl-base-1.0 from the hub)
    ./refiner/   the refiner, StableDiffusionXLImg2ImgPipeline.save_pretrained layout
                 (default: stabilityai/stable-diffusion-xl-refiner-1.0); its own
                 text_encoder_2 and vae, if saved, are not loaded: it uses the base's.
                 Loaded only when a prediction asks for a refine mode.

Modes: ``image`` + ``mask`` is inpainting (white repaints; image and mask resized to
width x height), ``image`` alone is img2img (the input's size floored to a multiple of 8;
width/height ignored), otherwise txt2img; a mask without an image is ignored.
The txt2img, img2img and inpainting pipelines are built per call from the base's loaded
modules (one load). Inpainting uses the base's 4-channel UNet in diffusers' latent-blend
mode, as the original does; a separate 9-channel inpainting UNet is not used.

``replicate_weights`` (a trainer tarball, runners/sdxl_weights.py) applies to one call
only: a LoRA is loaded into the shared UNet and unloaded after, a whole UNet is loaded
into a copy, new tokens go to per-call tokenizer copies. Such a call runs alone on the
modules (``ModuleUse``); the original instead kept the last trained weights loaded for
every later prediction.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from repligate.events import Log
from repligate.runners import lora, safety, sampling, schedulers
from repligate.runners.base import RunContext, RunnerEnv
from repligate.runners.module_use import ModuleUse
from repligate.runners.sdxl_weights import TrainedWeights, TrainedWeightsError, load_trained_weights
from repligate.runners.weights import about_files

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec

REFINER_REPO = "stabilityai/stable-diffusion-xl-refiner-1.0"
REFINER_SUBDIR = "refiner"
# base_image_refiner's img2img strength: diffusers' default, which the original keeps. Of N
# steps only int(N * strength) run, so fewer than 4 run none (models/sdxl.py refuses them).
REFINER_STRENGTH = 0.3


class StableDiffusionXLRunner:
    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec
        self._use = ModuleUse()

    # -- loading ---------------------------------------------------------------------

    def base(self) -> Any:
        def load() -> Any:
            from diffusers import StableDiffusionXLPipeline

            def from_pretrained(source: str) -> Any:
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    source, dtype=self.env.device.dtype, add_watermarker=False
                )
                return pipe.to(self.env.device.name)

            return self.env.weights.load(self.spec, from_pretrained)

        return self.env.pipelines.get(self.spec.key, load)

    def refiner_source(self) -> str:
        local = self.env.weights.local_dir(self.spec)
        if local is not None and (local / REFINER_SUBDIR).is_dir():
            return str(local / REFINER_SUBDIR)
        return REFINER_REPO

    def refiner(self, base: Any) -> Any:
        key = f"{self.spec.key}/{REFINER_SUBDIR}"

        def load() -> Any:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            source = self.refiner_source()
            try:
                pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                    source,
                    text_encoder_2=base.text_encoder_2,
                    vae=base.vae,
                    dtype=self.env.device.dtype,
                    add_watermarker=False,
                )
            except Exception as exc:
                if not about_files(exc):
                    raise
                raise self.env.weights.failed(
                    self.spec,
                    exc,
                    source,
                    REFINER_REPO if source == REFINER_REPO else None,
                    what="The weights of the SDXL refiner",
                    subdir=REFINER_SUBDIR,
                ) from None
            return pipe.to(self.env.device.name)

        refiner = self.env.pipelines.get(key, load)
        if refiner.vae is not base.vae:
            # The base was evicted and loaded again since: rebuild around its modules.
            refiner = self.env.pipelines.get(f"{key}@{id(base)}", load)
        return refiner

    # -- one prediction --------------------------------------------------------------

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        base = self.base()
        seed = sampling.start(self.env, self.spec, inputs.get("seed"), ctx)
        refiner = None if inputs["refine"] == "no_refiner" else self.refiner(base)
        trained = self._trained_weights(inputs.get("replicate_weights"), ctx)
        use = self._use.exclusive() if trained is not None else self._use.shared()
        with use, ExitStack() as restore:
            components = dict(base.components)
            if trained is not None:
                components.update(self._apply(trained, base, restore))
            images = self._generate(base, refiner, components, trained, inputs, seed, ctx)
        disabled = inputs["disable_safety_checker"]
        kept = safety.kept_images(self.env.safety, images, ctx, disabled=disabled)
        return safety.png_outputs(kept, self.env.png_compress_level)

    def _trained_weights(self, url: str | None, ctx: RunContext) -> TrainedWeights | None:
        if not url:
            return None
        if self.env.weights_cache is None:
            raise TrainedWeightsError("replicate_weights: this server has no cache for them")
        ctx.emit(Log("Loading fine-tuned model"))
        return load_trained_weights(self.env.weights_cache, url, self.env.fetcher)

    def _apply(self, trained: TrainedWeights, base: Any, restore: ExitStack) -> dict[str, Any]:
        """The call's components that differ from the base's; ``restore`` undoes every
        change made to a shared module."""
        changed: dict[str, Any] = {}
        if trained.unet is not None:
            unet = copy.deepcopy(base.unet)
            try:
                result = unet.load_state_dict(trained.unet, strict=False)
            except RuntimeError as exc:  # shapes that do not fit this UNet
                raise TrainedWeightsError(f"replicate_weights: unet.safetensors: {exc}") from exc
            if result.unexpected_keys:
                raise TrainedWeightsError(
                    "replicate_weights: unet.safetensors does not fit this UNet (unexpected "
                    f"keys such as {result.unexpected_keys[0]!r})"
                )
            changed["unet"] = unet
        elif trained.lora is not None:
            restore.enter_context(lora.applied_lora(base.unet, trained.lora, "replicate_weights"))
        for index, (tokenizer, encoder) in enumerate(
            (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
        ):
            vectors = trained.embeddings.get(f"text_encoders_{index}")
            if vectors is not None and base.components.get(encoder) is not None:
                changed[tokenizer] = restore.enter_context(
                    lora.added_embeddings(
                        base.components[tokenizer], base.components[encoder], vectors
                    )
                )
        return changed

    def _generate(
        self,
        base: Any,
        refiner: Any,
        components: dict[str, Any],
        trained: TrainedWeights | None,
        inputs: dict[str, Any],
        seed: int,
        ctx: RunContext,
    ) -> list[Any]:
        import diffusers

        prompt = inputs["prompt"] if trained is None else trained.substitute(inputs["prompt"])
        ctx.emit(Log(f"Prompt: {prompt}"))
        image, mask = inputs.get("image") or None, inputs.get("mask") or None
        call: dict[str, Any] = {}
        pipeline_class: Any
        if image is not None and mask is not None:
            ctx.emit(Log("inpainting mode"))
            pipeline_class = diffusers.StableDiffusionXLInpaintPipeline
            call.update(image=image.image(), mask_image=mask.image())
            call.update(strength=inputs["prompt_strength"])
            call.update(width=inputs["width"], height=inputs["height"])
        elif image is not None:
            ctx.emit(Log("img2img mode"))
            pipeline_class = diffusers.StableDiffusionXLImg2ImgPipeline
            call.update(image=image.image(), strength=inputs["prompt_strength"])
        else:
            ctx.emit(Log("txt2img mode"))
            pipeline_class = diffusers.StableDiffusionXLPipeline
            call.update(width=inputs["width"], height=inputs["height"])
        refine = inputs["refine"]
        if refine == "expert_ensemble_refiner":
            call.update(output_type="latent", denoising_end=inputs["high_noise_frac"])
        elif refine == "base_image_refiner":
            call.update(output_type="latent")
        if trained is not None and trained.lora is not None:
            call["cross_attention_kwargs"] = {"scale": inputs["lora_scale"]}
        watermark = self._watermark(inputs["apply_watermark"])
        # A new scheduler from the BASE's config as loaded, every call. The original built
        # it from the previous request's scheduler config, so e.g. Karras sigmas stayed on
        # for a later DPMSolverMultistep request; here no choice carries over.
        components["scheduler"] = schedulers.make(inputs["scheduler"], base.scheduler.config)
        pipe = pipeline_class(
            **components,
            force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
            add_watermarker=watermark,
        )
        pipe.set_progress_bar_config(disable=True)
        count = inputs["num_outputs"]
        common = {
            "prompt": [prompt] * count,
            "negative_prompt": [inputs["negative_prompt"]] * count,
            "guidance_scale": inputs["guidance_scale"],
            "generator": sampling.generator(seed),
            "num_inference_steps": inputs["num_inference_steps"],
            "callback_on_step_end": sampling.step_callback(ctx, self.env.threads),
        }
        output = pipe(**common, **call)
        if refiner is None:
            return list(output.images)
        refine_call: dict[str, Any] = {"image": output.images}
        if refine == "expert_ensemble_refiner":
            refine_call["denoising_start"] = inputs["high_noise_frac"]
        else:
            refine_call["strength"] = REFINER_STRENGTH
            if inputs.get("refine_steps"):
                common["num_inference_steps"] = inputs["refine_steps"]
        # The refiner keeps its own scheduler kind (the original never swaps it), fresh
        # per call because a scheduler holds per-call state.
        refiner_pipe = type(refiner)(
            **{
                **refiner.components,
                "scheduler": type(refiner.scheduler).from_config(refiner.scheduler.config),
                # Trained tokens reach the refiner's encoder (it shares text_encoder_2).
                "tokenizer_2": components["tokenizer_2"] if trained else refiner.tokenizer_2,
            },
            requires_aesthetics_score=refiner.config.requires_aesthetics_score,
            force_zeros_for_empty_prompt=refiner.config.force_zeros_for_empty_prompt,
            add_watermarker=watermark,
        )
        refiner_pipe.set_progress_bar_config(disable=True)
        return list(refiner_pipe(**common, **refine_call).images)

    @staticmethod
    def _watermark(apply: bool) -> bool:
        from diffusers.utils import is_invisible_watermark_available

        if apply and not is_invisible_watermark_available():
            raise RuntimeError(
                "apply_watermark needs the invisible-watermark package, which this server "
                "lacks (pip install 'repligate[local]'); or send apply_watermark: false"
            )
        return apply
