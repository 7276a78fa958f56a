"""lucataco/animate-diff: AnimateDiff on a personalised Stable Diffusion 1.5 checkpoint,
through diffusers' ``AnimateDiffPipeline`` and ``MotionAdapter``.

As the original (cog-animatediff, AnimateDiff's own code on diffusers 0.11):
- ``motion_module`` picks AnimateDiff's motion module (``mm_sd_v14``, ``mm_sd_v15``,
  ``mm_sd_v15_v2``; diffusers' ports are ``guoyww/animatediff-motion-adapter-v1-4``,
  ``-v1-5`` and ``-v1-5-2``);
- ``path`` names one of five DreamBooth checkpoints (civitai files): only its UNet and VAE
  are loaded (``from_single_file``, with SD 1.5's configs); the text encoder and tokenizer
  stay SD 1.5's, as the original ignores the checkpoint's CLIP;
- DDIM with the original's betas: ``beta_schedule="linear"`` (not the usual
  "scaled_linear"), the rest at diffusers' defaults as in 0.11 (clip_sample on,
  steps_offset 0);
- 16 frames at SD 1.5's native size: its UNet's ``sample_size`` (64) times the VAE's factor
  (8) is the original's fixed 512x512 (the tiny test weights say 8, so 64 px);
- the seed: random 32 bits when omitted ("0 = random" in its description is not what
  that revision does: 0 is seed 0), logged as "Using seed: N";
- one MP4, ``out.mp4``: H.264 at 8 fps, yuv420p, ``-qp 17``, moov first (faststart). The
  original went through a GIF first (imageio, then ffmpeg), so its colours were
  palette-quantised; here the frames go straight to the H.264 encoder.

Unlike the original, which rebuilt the 3D UNet from disk for every prediction, pipelines
are cached per (motion module, checkpoint) in the pipeline cache; every one of them shares
the one SD 1.5 text encoder. Frames are decoded one at a time after the denoising loop and
handed to the encoder as they come: cancel works between denoising steps and between
frames, and ``logs`` count both.

One known difference remains: AnimateDiff v2's "inflated" group norm (normalising across
frames) has no counterpart in diffusers' ``UNetMotionModel``, which normalises each frame.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repligate.events import Canceled, FrameProgress, Log
from repligate.runners import sampling
from repligate.runners.base import RunContext, RunnerEnv
from repligate.runners.weights import about_files
from repligate.storage import encode

if TYPE_CHECKING:
    from repligate.events import OutputFile
    from repligate.models.spec import ModelSpec

FRAMES = 16
FPS = 8
# cog-animatediff's ffmpeg call: constant quantiser 17.
X264_OPTIONS = {"qp": "17"}

# Inside <weights_dir>/lucataco__animate-diff/ (repligate.testing.tiny_animate_diff writes
# the same layout with tiny random weights).
BASE_DIR = "stable-diffusion-v1-5"
MOTION_DIR = "motion_modules"
CHECKPOINT_DIR = "checkpoints"
BASE_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_REPOS = {
    "mm_sd_v14": "guoyww/animatediff-motion-adapter-v1-4",
    "mm_sd_v15": "guoyww/animatediff-motion-adapter-v1-5",
    "mm_sd_v15_v2": "guoyww/animatediff-motion-adapter-v1-5-2",
}
# civitai model-version ids of the five checkpoints the original downloads at build time.
CHECKPOINT_SOURCES = {
    "toonyou_beta3.safetensors": 78775,
    "lyriel_v16.safetensors": 72396,
    "rcnzCartoon3d_v10.safetensors": 71009,
    "majicmixRealistic_v5Preview.safetensors": 79068,
    "realisticVisionV40_v20Novae.safetensors": 29460,
}
_VAE_PREFIXES = ("first_stage_model.", "vae.")

# Per worker thread and cached pipeline: a pipeline object around the cached modules, so
# each prediction's scheduler (which keeps per-call state) is its own. As in
# runners/stable_diffusion.py; weakly keyed, so evicted pipelines take theirs along.
_wrappers = threading.local()


class AnimateDiffRunner:
    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    # --- loading -------------------------------------------------------------------------

    def pipeline(self, motion_module: str, checkpoint: str) -> Any:
        key = f"{self.spec.key}/{motion_module}/{checkpoint}"
        return self.env.pipelines.get(key, lambda: self._load(motion_module, checkpoint))

    def _part(self, subdir: str, repo: str | None) -> tuple[str, str | None]:
        """(where to load a part from, the hub repo when that is where): the part's folder
        or file in the weights dir if there is one, else its Hugging Face repo."""
        local = self.env.weights.local_dir(self.spec)
        if local is not None and (local / subdir).exists():
            return str(local / subdir), None
        if repo is not None:
            return repo, repo
        name = Path(subdir).name
        version = CHECKPOINT_SOURCES[name]
        raise self.env.weights.unavailable(
            self.spec,
            None,
            f"the file is not on this server (download civitai model version {version}, "
            f"https://civitai.com/api/download/models/{version}, and save it as {name})",
            what=f"The checkpoint {name} of {self.spec.ref}",
            subdir=str(Path(subdir).parent),
        )

    def _load(self, motion_module: str, checkpoint: str) -> Any:
        import diffusers
        from transformers import CLIPTextModel, CLIPTokenizer

        dtype = self.env.device.dtype
        base, base_repo = self._part(BASE_DIR, BASE_REPO)
        sd15 = f"SD 1.5 (text encoder, tokenizer, configs) of {self.spec.ref}"
        adapter_dir, adapter_repo = self._part(
            f"{MOTION_DIR}/{motion_module}", MOTION_REPOS[motion_module]
        )
        file, _ = self._part(f"{CHECKPOINT_DIR}/{checkpoint}", None)
        version = CHECKPOINT_SOURCES[checkpoint]
        personalised = f"The checkpoint {checkpoint} (civitai model version {version})"

        def text_encoder() -> Any:
            loaded: Any = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=dtype)
            return loaded.to(self.env.device.name)

        def from_checkpoint(model_class: Any, subfolder: str) -> Any:
            return model_class.from_single_file(file, config=base, subfolder=subfolder, dtype=dtype)

        with self._failure(personalised, file, None):
            has_vae = _has_vae(file)  # also says plainly when the file is no checkpoint
            unet = from_checkpoint(diffusers.UNet2DConditionModel, "unet")
            vae = from_checkpoint(diffusers.AutoencoderKL, "vae") if has_vae else None
        with self._failure(sd15, base, base_repo):
            # One text encoder for every (motion module, checkpoint) while any is alive.
            encoder = self.env.modules.load(f"{base}#text_encoder", CLIPTextModel, text_encoder)
            tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
            if vae is None:  # a checkpoint without a VAE decodes with SD 1.5's
                vae = diffusers.AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=dtype)
        with self._failure(f"The motion module {motion_module}", adapter_dir, adapter_repo):
            adapter = diffusers.MotionAdapter.from_pretrained(adapter_dir, dtype=dtype)
        pipe: Any = diffusers.AnimateDiffPipeline(
            vae=vae,
            text_encoder=encoder,
            tokenizer=tokenizer,
            unet=unet,  # becomes a UNetMotionModel with a copy of the adapter's modules
            motion_adapter=adapter,
            scheduler=original_scheduler(),
        )
        # The UNet holds its own copy of the motion modules: not keeping the adapter as
        # well saves its size (about 0.9 GB in fp16) per cached pipeline.
        pipe.register_modules(motion_adapter=None)
        return pipe.to(self.env.device.name)

    @contextlib.contextmanager
    def _failure(self, what: str, source: str, repo: str | None) -> Iterator[None]:
        """A loading failure inside becomes WeightsUnavailable naming ``what`` failed."""
        try:
            yield
        except Exception as exc:
            if not about_files(exc):
                raise  # e.g. out of memory moving it to the device
            raise self.env.weights.failed(
                self.spec, exc, source, repo, what=f"{what} of {self.spec.ref}"
            ) from None

    # --- running -------------------------------------------------------------------------

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> OutputFile:
        base = self.pipeline(inputs["motion_module"], inputs["path"])
        if self.env.weights.is_random(self.spec):
            ctx.emit(Log("Note: this server runs tiny random weights; outputs are noise."))
        seed = inputs.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "big")
        ctx.emit(Log(f"Using seed: {seed}"))
        pipe = _thread_pipeline(base)
        pipe.scheduler = original_scheduler()
        size = size_of(pipe)
        ctx.emit(Log(f"sampling: {inputs['prompt']} ..."))
        latents = pipe(
            prompt=inputs["prompt"],
            negative_prompt=inputs["n_prompt"],
            num_frames=FRAMES,
            height=size,
            width=size,
            num_inference_steps=inputs["steps"],
            guidance_scale=inputs["guidance_scale"],
            generator=sampling.generator(seed),
            output_type="latent",
            callback_on_step_end=sampling.step_callback(ctx, self.env.threads),
        ).frames
        with encode.Mp4Writer(FPS, x264=X264_OPTIONS) as writer:
            for index in range(FRAMES):
                if ctx.canceled():
                    raise Canceled()
                writer.add_frame(_decode(pipe, latents, index))
                ctx.emit(Log(f"frame {index + 1}/{FRAMES} decoded"))
                ctx.emit(FrameProgress(index + 1, FRAMES))
            return writer.finish("out.mp4")


def original_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")


def size_of(pipe: Any) -> int:
    """The side of the square frames: SD 1.5's native size (512 for its UNet config)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def _decode(pipe: Any, latents: Any, index: int) -> Any:
    """Frame ``index`` of ``latents`` (batch, channels, frames, h, w) as a PIL image."""
    import torch

    with torch.no_grad():
        video = pipe.decode_latents(latents[:, :, index : index + 1], decode_chunk_size=1)
    return pipe.video_processor.postprocess(video[:, :, 0], output_type="pil")[0]


def _has_vae(file: str) -> bool:
    """Whether a checkpoint holds VAE weights (some are published without)."""
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as opened:
            keys: list[str] = opened.keys()
    except Exception as exc:  # safetensors' own error type is no OSError
        raise ValueError(f"{Path(file).name} is not a readable safetensors file: {exc}") from exc
    return any(key.startswith(_VAE_PREFIXES) for key in keys)


def _thread_pipeline(base: Any) -> Any:
    kept: weakref.WeakKeyDictionary[Any, Any] | None = getattr(_wrappers, "kept", None)
    if kept is None:
        kept = _wrappers.kept = weakref.WeakKeyDictionary()
    pipe = kept.get(base)
    if pipe is None:
        pipe = type(base)(**base.components)
        pipe.set_progress_bar_config(disable=True)
        kept[base] = pipe
    return pipe
