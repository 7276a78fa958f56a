"""Stable Diffusion text-to-image through diffusers' StableDiffusionPipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repligate.events import Log
from repligate.runners import sampling, schedulers
from repligate.runners.base import RunContext, RunnerEnv
from repligate.storage import encode

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec


class StableDiffusionTextToImageRunner:
    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    def _load(self) -> Any:
        from diffusers import StableDiffusionPipeline

        def from_pretrained(source: str) -> Any:
            pipe = StableDiffusionPipeline.from_pretrained(source, dtype=self.env.device.dtype)
            return pipe.to(self.env.device.name)

        return self.env.weights.load(self.spec, from_pretrained)

    def pipeline(self) -> Any:
        return self.env.pipelines.get(self.spec.key, self._load)

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        base = self.pipeline()
        if self.env.weights.is_random(self.spec):
            ctx.emit(Log("Note: this server runs tiny random weights; outputs are noise."))
        seed = sampling.resolve_seed(inputs.get("seed"), ctx)
        # A fresh pipeline object around the shared modules: the scheduler (which keeps
        # per-call state) is new for every prediction and never leaks into the next one.
        pipe = type(base)(
            **{
                **base.components,
                "scheduler": schedulers.make(inputs["scheduler"], base.scheduler.config),
            },
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        count = inputs["num_outputs"]
        negative = inputs.get("negative_prompt")
        result = pipe(
            prompt=[inputs["prompt"]] * count,
            negative_prompt=[negative] * count if negative else None,
            width=inputs["width"],
            height=inputs["height"],
            guidance_scale=inputs["guidance_scale"],
            num_inference_steps=inputs["num_inference_steps"],
            generator=sampling.generator(seed),
            callback_on_step_end=sampling.step_callback(ctx),
        )
        level = self.env.png_compress_level
        return [encode.png(image, f"out-{i}.png", level) for i, image in enumerate(result.images)]
