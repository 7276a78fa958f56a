"""andreasjansson/stable-diffusion-animation through HTTP against a direct loop over the
same modules, on the tiny random weights: prints a table, never passes or fails.

    python bench/animation.py                 # 128x128, 4 key frames, 3 in-betweens, 5 rounds
    python bench/animation.py --frames 6 --steps 8 --rounds 3

Builds the tiny SD 1.x and FILM weights in a temp dir and starts a live repligate server.
Round by round (so drift cancels), the same animation is made each way, with latent
in-betweens and with FILM: ``POST /v1/predictions`` with ``Prefer: wait`` (the runner:
events, progress lines, cancel checks, frames streamed to the encoder, the file stored),
and directly: a plain loop on one thread over the server's own cached modules (text
encoder, UNet, PNDM, VAE, FILM) with the same seed, then ``encode.mp4``. Per-frame costs
are medians divided by the video's frame count.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch
from PIL import Image

from repligate.app import create_app
from repligate.models.stable_diffusion_animation import MODEL
from repligate.runners import animation_frames as plan
from repligate.runners import film, sampling, schedulers
from repligate.settings import Settings
from repligate.storage import encode
from repligate.testing.live_server import LiveServer
from repligate.testing.tiny_animation import film_net, stable_diffusion_v1

SEED = 1234
SIZE = 128


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def direct_animation(pipe: Any, net: Any, inputs: dict[str, Any]) -> None:
    """The same animation as a plain loop: no events, checks, spool or storage."""
    steps = inputs["num_inference_steps"]
    with torch.inference_mode():
        conds = [
            pipe.encode_prompt(text, "cpu", 1, False)[0]
            for text in (inputs["prompt_start"], inputs["prompt_end"])
        ]
        scheduler = schedulers.make("PNDM", pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        shared = int(steps * (1 - inputs["prompt_strength"]))
        noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=sampling.generator(SEED))

        def denoise(latents: Any, cond: Any, timesteps: Any, sched: Any) -> Any:
            for t in timesteps:
                out = pipe.unet(latents, t, encoder_hidden_states=cond).sample
                latents = sched.step(out, t, latents).prev_sample
            return latents

        def decode(latents: Any) -> Any:
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            return (image / 2 + 0.5).clamp(0, 1)

        def picture(image: Any) -> Image.Image:
            pixels = (image[0].permute(1, 2, 0) * 255).round().byte().numpy()
            return Image.fromarray(pixels)

        start = denoise(noise, plan.slerp(0.5, *conds), scheduler.timesteps[:shared], scheduler)
        count = inputs["num_animation_frames"]
        keys = []
        for i in range(count):
            sched = copy.deepcopy(scheduler)
            cond = plan.slerp(i / (count - 1), *conds)
            latents = denoise(start.clone(), cond, scheduler.timesteps[shared:], sched)
            keys.append((latents, decode(latents)))
        frames = []
        between = inputs["num_interpolation_steps"]
        for (a_lat, a_img), (b_lat, b_img) in itertools.pairwise(keys):
            frames.append(picture(a_img))
            if net is None:
                for j in range(1, between):
                    t = j / between
                    frames.append(picture(decode((1 - t) * a_lat + t * b_lat)))
            else:
                interpolator = film.Interpolator(net, plan.film_depth(between), lambda: None)
                frames.extend(picture(image) for image in interpolator.between(a_img, b_img))
        if net is not None:
            frames.append(picture(keys[-1][1]))
        encode.mp4(frames, "video.mp4", 20, x264={"crf": "17", "tune": "film"})


def on_thread(thread: ThreadPoolExecutor, pipe: Any, net: Any, inputs: dict[str, Any]) -> float:
    """Seconds for one direct animation, run on the bench's one long-lived thread."""

    def timed() -> float:
        started = time.perf_counter()
        direct_animation(pipe, net, inputs)
        return time.perf_counter() - started

    return thread.submit(timed).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--between", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    base = {
        "prompt_start": "a red fox",
        "prompt_end": "a blue bird",
        "width": SIZE,
        "height": SIZE,
        "num_inference_steps": args.steps,
        "prompt_strength": 0.5,
        "guidance_scale": 1,
        "num_animation_frames": args.frames,
        "num_interpolation_steps": args.between,
        "output_format": "mp4",
        "seed": SEED,
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, "weights")
        stable_diffusion_v1(weights / MODEL.key)
        film_net(weights / film.DIR_NAME)
        settings = Settings(data_dir=Path(tmp, "data"), weights_dir=weights)
        with LiveServer(create_app(settings)) as server:
            http = httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
                timeout=300,
            )
            thread = ThreadPoolExecutor(max_workers=1)
            runner: Any = server.container.provider.runner(MODEL)
            print(
                f"\nstable-diffusion-animation (tiny), {SIZE}x{SIZE}, {args.frames} key frames, "
                f"{args.between} in-betweens, {args.steps} steps, {args.rounds} rounds, medians "
                f"(load average {os.getloadavg()[0]:.2f})"
            )
            print(f"{'path':<36}{'frames':>7}{'per video':>12}{'per frame':>12}{'ratio':>8}")
            for use_film in (False, True):
                inputs = {**base, "film_interpolation": use_film}

                def through_http(inputs: dict[str, Any] = inputs) -> float:
                    started = time.perf_counter()
                    body = http.post(
                        "/v1/predictions", json={"version": MODEL.version, "input": inputs}
                    ).json()
                    elapsed = time.perf_counter() - started
                    if body["status"] != "succeeded":
                        raise SystemExit(f"the prediction did not succeed: {body['error']}")
                    return elapsed

                through_http()  # loads the pipeline (and FILM) into the server's cache
                pipe = runner.pipeline()
                net = runner.film_net() if use_film else None

                direct = functools.partial(on_thread, thread, pipe, net, inputs)

                direct()
                http_times: list[float] = []
                direct_times: list[float] = []
                for round_index in range(args.rounds):
                    pair = [(http_times, through_http), (direct_times, direct)]
                    for times, call in pair if round_index % 2 else reversed(pair):
                        times.append(call())
                h, d = statistics.median(http_times), statistics.median(direct_times)
                count = plan.video_frame_count(args.frames, args.between, use_film, False)
                kind = "FILM" if use_film else "latent"
                rows = [
                    (f"direct loop, {kind}", d, 1.0),
                    (f"HTTP: runner, {kind}", h, h / d),
                ]
                for label, value, ratio in rows:
                    print(
                        f"{label:<36}{count:>7}{ms(value):>12}{ms(value / count):>12}{ratio:>8.3f}"
                    )
                print(f"{'  added by serving':<36}{'':>7}{ms(h - d):>12}{ms((h - d) / count):>12}")
            thread.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
