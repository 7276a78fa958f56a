"""andreasjansson/stable-diffusion-animation on a Stable Diffusion 1.x diffusers pipeline.

As the original (research/models-2.md §3; its ``animate.py`` is not public, so this is
rebuilt on the pipeline's modules):
1. one seeded noise latent (CPU generator, so a seed gives the same animation anywhere);
2. ``int(steps * (1 - prompt_strength))`` PNDM steps run once from it with the middle
   text embedding: the shared start of every key frame;
3. each key frame continues the remaining steps from that shared latent (with a copy of
   the scheduler, PNDM's history included) under the slerp of the prompts' embeddings;
4. in-betweens: latent mixes decoded by the VAE, or FILM on the decoded frames;
5. gif_ping_pong, then GIF or MP4 at gif_frames_per_second.

Frames go to the encoder as they are made (``video_frames`` is a generator; each frame is
handed to a streaming writer of ``storage/encode.py``): alive at any time are the shared
latent, the previous and current key frame and FILM's recursion. gif_ping_pong's way back
is read from a spool on disk.
With ``intermediate_output`` each key frame appears in ``output`` (a PNG) as soon as it is
made; the video is always the last item.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repligate.events import Canceled, FrameProgress, Log, Output, Progress
from repligate.runners import animation_frames as plan
from repligate.runners import film, safety, sampling, schedulers
from repligate.runners.base import RunContext
from repligate.runners.stable_diffusion import StableDiffusionRunner, _thread_pipeline
from repligate.storage import encode

if TYPE_CHECKING:
    import numpy as np
    import torch

    from repligate.runners.film_net import FilmNet


@dataclass
class _Frame:
    latent: torch.Tensor
    image: torch.Tensor  # 1 x 3 x H x W in [0, 1]


class StableDiffusionAnimationRunner(StableDiffusionRunner):
    """andreasjansson/stable-diffusion-animation: key frames between prompts, in-betweens
    by latent mixing or FILM, a GIF or MP4."""

    def film_net(self) -> FilmNet:
        weights_dir = self.env.weights.weights_dir
        return self.env.pipelines.get(
            film.CACHE_KEY, lambda: film.load(weights_dir, self.env.device)
        )

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        from PIL import Image

        # FILM first: a prediction that cannot finish fails before any work.
        net = self.film_net() if inputs["film_interpolation"] else None
        base = self.pipeline()
        if self.env.weights.is_random(self.spec):
            ctx.emit(Log("Note: this server runs tiny random weights; outputs are noise."))
        seed = sampling.resolve_seed(inputs.get("seed"), ctx)
        animation = _Animation(self, _thread_pipeline(base), inputs, ctx, seed, net)
        with _writer(inputs["output_format"], inputs["gif_frames_per_second"]) as writer:
            for frame in animation.video_frames():
                writer.add_frame(Image.fromarray(frame))
            video = writer.finish(f"video.{inputs['output_format']}")
        ctx.emit(Output(video))
        return None


def _writer(output_format: str, fps: int) -> encode.GifWriter | encode.Mp4Writer:
    """The original's encoders: GIF frames of int(1000 / fps) ms looping forever; H.264
    at crf 17 tuned for film."""
    if output_format == "mp4":
        return encode.Mp4Writer(fps, x264={"crf": "17", "tune": "film"})
    return encode.GifWriter(fps)


class _Animation:
    """One prediction's animation, made frame by frame."""

    def __init__(
        self,
        runner: StableDiffusionAnimationRunner,
        pipe: Any,
        inputs: dict[str, Any],
        ctx: RunContext,
        seed: int,
        net: FilmNet | None,
    ) -> None:
        self.runner = runner
        self.env = runner.env
        self.pipe = pipe
        self.inputs = inputs
        self.ctx = ctx
        self.seed = seed
        self.film = None if net is None else film.Interpolator(net, self._film_levels(), self.check)

    def _film_levels(self) -> int:
        return plan.film_depth(self.inputs["num_interpolation_steps"])

    def check(self) -> None:
        if self.ctx.canceled():
            raise Canceled()

    def video_frames(self) -> Iterator[np.ndarray]:
        """Every frame of the video in order (H x W x 3 uint8), made as they are pulled."""
        inputs = self.inputs
        spool = plan.FrameSpool() if inputs["gif_ping_pong"] else None
        total = self._frame_total()
        try:
            count = 0
            for frame in self._forward_frames():
                if spool is not None:
                    spool.add(frame)
                count += 1
                self.ctx.emit(FrameProgress(count, total))
                yield frame
            if spool is not None:
                tail = plan.ping_pong_tail(count)
                for made, frame in enumerate(spool.read(tail), count + 1):
                    self.ctx.emit(FrameProgress(made, total))
                    yield frame
                self.ctx.emit(Log(f"Video frames: {count + len(tail)}/{count + len(tail)}"))
        finally:
            if spool is not None:
                spool.close()

    def _frame_total(self) -> int:
        """How many frames the video has, ping-pong included (``progress.frame.total``)."""
        inputs = self.inputs
        texts = plan.prompts(inputs["prompt_start"], inputs["prompt_end"])
        keys = plan.key_frames(len(texts), inputs["num_animation_frames"])
        steps = inputs["num_interpolation_steps"]
        return plan.video_frame_count(
            len(keys), steps, self.film is not None, inputs["gif_ping_pong"]
        )

    def _forward_frames(self) -> Iterator[np.ndarray]:
        import torch

        inputs = self.inputs
        with torch.inference_mode():
            self.env.threads.apply()
            texts = plan.prompts(inputs["prompt_start"], inputs["prompt_end"])
            conds, uncond = self._embed(texts)
            scheduler = schedulers.make("PNDM", self.pipe.scheduler.config)
            scheduler.set_timesteps(inputs["num_inference_steps"], device=self.env.device.name)
            timesteps = scheduler.timesteps
            shared = int(inputs["num_inference_steps"] * (1 - inputs["prompt_strength"]))
            latent = self._noise() * scheduler.init_noise_sigma
            self.ctx.emit(Log(f"Shared denoising: {shared} of {len(timesteps)} steps"))
            latent = self._denoise(
                latent, plan.middle_embedding(conds), uncond, timesteps[:shared], scheduler
            )

            keys = plan.key_frames(len(texts), inputs["num_animation_frames"])
            steps = inputs["num_interpolation_steps"]
            total = plan.video_frame_count(len(keys), steps, self.film is not None, False)
            made = 0
            previous: _Frame | None = None
            for key in keys:
                self.check()
                self.ctx.emit(Log(f"Key frame {key.index + 1}/{len(keys)}"))
                embedding = plan.slerp(key.t, conds[key.pair], conds[key.pair + 1])
                latents = self._denoise(
                    latent.clone(), embedding, uncond, timesteps[shared:], copy.deepcopy(scheduler)
                )
                current = _Frame(latents, self._decode(latents))
                if key.index in (0, len(keys) - 1):
                    self._safety_check(current.image)
                if inputs["intermediate_output"]:
                    self._emit_key_frame(key.index, current.image)
                if previous is not None:
                    for frame in self._in_betweens(previous, current):
                        self.check()
                        made += 1
                        yield frame
                    self.ctx.emit(Log(f"Video frames: {made}/{total}"))
                previous = current
            if self.film is not None and previous is not None:
                made += 1
                yield _uint8(previous.image)
                self.ctx.emit(Log(f"Video frames: {made}/{total}"))

    def _in_betweens(self, previous: _Frame, current: _Frame) -> Iterator[np.ndarray]:
        """The frames from ``previous`` (included) up to ``current`` (excluded)."""
        yield _uint8(previous.image)
        if self.film is not None:
            for image in self.film.between(previous.image, current.image):
                yield _uint8(image)
            return
        steps = self.inputs["num_interpolation_steps"]
        for j in range(1, steps):
            t = j / steps
            yield _uint8(self._decode((1 - t) * previous.latent + t * current.latent))

    def _embed(self, texts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each prompt's text embedding, and the unconditional one when guidance is on."""
        guided = self.inputs["guidance_scale"] > 1
        conds = []
        uncond = None
        for text in texts:
            cond, negative = self.pipe.encode_prompt(
                text, self.env.device.name, 1, guided, negative_prompt=None
            )
            conds.append(cond)
            uncond = negative if guided else None
        return conds, uncond

    def _noise(self) -> torch.Tensor:
        import torch

        size = (
            1,
            self.pipe.unet.config.in_channels,
            self.inputs["height"] // self.pipe.vae_scale_factor,
            self.inputs["width"] // self.pipe.vae_scale_factor,
        )
        noise = torch.randn(size, generator=sampling.generator(self.seed))
        return noise.to(self.env.device.name, dtype=self.pipe.unet.dtype)

    def _denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        timesteps: torch.Tensor,
        scheduler: Any,
    ) -> torch.Tensor:
        import torch

        embedding = cond if uncond is None else torch.cat([uncond, cond])
        scale = self.inputs["guidance_scale"]
        for step, timestep in enumerate(timesteps):
            self.check()
            model_input = latents if uncond is None else torch.cat([latents] * 2)
            model_input = scheduler.scale_model_input(model_input, timestep)
            noise = self.pipe.unet(model_input, timestep, encoder_hidden_states=embedding).sample
            if uncond is not None:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, timestep, latents).prev_sample
            self.ctx.emit(Progress(step=step + 1, total=len(timesteps)))
            self.env.threads.apply()
        return latents

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return (image / 2 + 0.5).clamp(0, 1)

    def _safety_check(self, image: torch.Tensor) -> None:
        """The original checks the first and last frames; a flagged one fails it."""
        from PIL import Image

        if any(self.env.safety.flags([Image.fromarray(_uint8(image))])):
            raise safety.NSFWContentDetected()

    def _emit_key_frame(self, index: int, image: torch.Tensor) -> None:
        from PIL import Image

        picture = Image.fromarray(_uint8(image))
        name = f"key-frame-{index:03d}.png"
        self.ctx.emit(Output(encode.png(picture, name, self.env.png_compress_level)))


def _uint8(image: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W in [0, 1] -> H x W x 3 uint8."""
    pixels = (image[0].permute(1, 2, 0).float() * 255).round().clamp(0, 255)
    array: np.ndarray = pixels.to("cpu").byte().numpy()
    return array
