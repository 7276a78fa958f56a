"""lucataco/animate-diff through HTTP against a direct diffusers loop, on the tiny random
weights: prints a table, never passes or fails.

    python bench/animate_diff.py              # 4 steps, 5 rounds
    python bench/animate_diff.py --steps 10 --rounds 3

Builds the tiny animate-diff weights (16 frames of 64x64: the tiny SD 1.5's native size)
in a temp dir and starts a live repligate server. Round by round (so drift cancels), the
same prediction runs each way: ``POST /v1/predictions`` with ``Prefer: wait`` (the
server's runner: denoise, then decode and H.264-encode one frame at a time), and directly:
an ``AnimateDiffPipeline`` around the server's own cached modules, called on one thread
with the same seed, steps and scheduler, decoding all 16 frames at once (diffusers'
default), then encoding them with ``encode.mp4``. Per-frame costs are the medians / 16.
"""

from __future__ import annotations

import argparse
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

from repligate.app import create_app
from repligate.models.animate_diff import MODEL
from repligate.runners import animate_diff, sampling
from repligate.settings import Settings
from repligate.storage import encode
from repligate.testing.live_server import LiveServer
from repligate.testing.tiny_animate_diff import animate_diff as build_tiny

SEED = 1234
INPUT = {"prompt": "a cat walking", "motion_module": "mm_sd_v14"}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    inputs = {**INPUT, "steps": args.steps, "seed": SEED}

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, "weights")
        build_tiny(weights / MODEL.key)
        settings = Settings(data_dir=Path(tmp, "data"), weights_dir=weights)
        with LiveServer(create_app(settings)) as server:
            http = httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
                timeout=300,
            )
            thread = ThreadPoolExecutor(max_workers=1)

            def through_http() -> float:
                started = time.perf_counter()
                body = http.post(
                    "/v1/predictions", json={"version": MODEL.version, "input": inputs}
                ).json()
                elapsed = time.perf_counter() - started
                if body["status"] != "succeeded":
                    raise SystemExit(f"the prediction did not succeed: {body['error']}")
                return elapsed

            provider = server.container.provider
            runner: Any = provider.runner(MODEL)
            through_http()  # loads the pipeline into the server's cache
            cached = runner.pipeline(INPUT["motion_module"], "toonyou_beta3.safetensors")
            pipe = type(cached)(**cached.components)
            pipe.set_progress_bar_config(disable=True)

            def direct_call() -> float:
                started = time.perf_counter()
                pipe.scheduler = animate_diff.original_scheduler()
                frames = pipe(
                    prompt=inputs["prompt"],
                    negative_prompt="",
                    num_frames=animate_diff.FRAMES,
                    num_inference_steps=args.steps,
                    guidance_scale=7.5,
                    generator=sampling.generator(SEED),
                ).frames[0]
                encode.mp4(frames, "out.mp4", animate_diff.FPS, x264=animate_diff.X264_OPTIONS)
                return time.perf_counter() - started

            def direct() -> float:
                return thread.submit(direct_call).result()

            direct()  # warm-up of the direct thread
            http_times: list[float] = []
            direct_times: list[float] = []
            for round_index in range(args.rounds):
                pair = [(http_times, through_http), (direct_times, direct)]
                for times, call in pair if round_index % 2 else reversed(pair):
                    times.append(call())

            h, d = statistics.median(http_times), statistics.median(direct_times)
            frames = animate_diff.FRAMES
            print(
                f"\nanimate-diff (tiny), {frames} frames of 64x64, {args.steps} steps, "
                f"{args.rounds} rounds, medians (load average {os.getloadavg()[0]:.2f})"
            )
            print(f"{'path':<34}{'per video':>12}{'per frame':>12}{'ratio':>8}")
            print(f"{'direct: pipeline + encode.mp4':<34}{ms(d):>12}{ms(d / frames):>12}{1:>8.3f}")
            label = "HTTP: runner, frames streamed"
            print(f"{label:<34}{ms(h):>12}{ms(h / frames):>12}{h / d:>8.3f}")
            print(f"{'added by serving':<34}{ms(h - d):>12}{ms((h - d) / frames):>12}")
            thread.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
