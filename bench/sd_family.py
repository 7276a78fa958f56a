"""The Stable Diffusion family through HTTP against a direct diffusers call: prints tables,
never passes or fails.

    python bench/sd_family.py                  # 256x256, 10 steps, 5 rounds
    python bench/sd_family.py --size 512 --steps 20 --rounds 7

Builds the tiny random-weight pipelines in a temp dir and starts a live repligate server.
For each model and mode, round by round (so drift cancels), it runs the same prediction
in a block of calls each way (the first of each block dropped, see BLOCK): through
``POST /replicate/v1/predictions`` (sync), and directly: a diffusers pipeline built around
the server's own cached modules, called on one long-lived thread with the same seed,
size, steps and scheduler, then PNG-encoded. The second table is the
cost of switching SDXL between txt2img, img2img and inpainting on its shared modules:
alternating modes against repeating one mode.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
from PIL import Image

from repligate.app import create_app
from repligate.models import all_models
from repligate.runners import schedulers
from repligate.settings import Settings
from repligate.storage import encode
from repligate.testing.live_server import LiveServer
from repligate.testing.tiny_weights import build_all

SEED = 1234
BLOCK = 3


def data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(size: int) -> Image.Image:
    return Image.effect_noise((size, size), 64).convert("RGB")


def mask(size: int) -> Image.Image:
    half = Image.new("L", (size, size), 0)
    half.paste(255, (size // 2, 0, size, size))
    return half


class Family:
    def __init__(self, server: LiveServer, size: int, steps: int) -> None:
        self.server = server
        self.size, self.steps = size, steps
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
            timeout=120,
        )
        self.thread = ThreadPoolExecutor(max_workers=1)  # the direct calls' one thread
        self.specs = {spec.name: spec for spec in all_models()}
        self.image, self.mask = picture(size), mask(size)

    def predict(self, model: str, inputs: dict[str, Any]) -> float:
        spec = self.specs[model]
        body = {"version": spec.version, "input": {**inputs, "seed": SEED}}
        started = time.perf_counter()
        answer = self.http.post("/replicate/v1/predictions", json=body).json()
        elapsed = time.perf_counter() - started
        if answer["status"] != "succeeded":
            raise SystemExit(f"{model} did not succeed: {answer['error']}")
        return elapsed

    def runner(self, model: str) -> Any:
        provider = self.server.container.provider
        return provider.runner(self.specs[model])

    def direct(self, make: Callable[[], Any], call: Callable[[Any], Any]) -> float:
        def run() -> float:
            started = time.perf_counter()
            images = call(make()).images
            for index, image in enumerate(images):
                encode.png(image, f"out-{index}.png")
            return time.perf_counter() - started

        return self.thread.submit(run).result()

    # -- the cases: (label, http call, direct call) --------------------------------------

    def cases(self) -> list[tuple[str, Callable[[], float], Callable[[], float]]]:
        import diffusers
        import torch

        size, steps = self.size, self.steps
        common = {"prompt": "a red fox", "num_inference_steps": steps, "guidance_scale": 7.5}

        def gen() -> torch.Generator:
            return torch.Generator("cpu").manual_seed(SEED)

        def sd_pipe(model: str, cls: Any) -> Callable[[], Any]:
            def make() -> Any:
                base = self.runner(model).pipeline()
                scheduler = schedulers.make("K_EULER", base.scheduler.config)
                pipe = cls(
                    **{**base.components, "scheduler": scheduler}, requires_safety_checker=False
                )
                pipe.set_progress_bar_config(disable=True)
                return pipe

            return make

        def sdxl_pipe(cls: Any) -> Callable[[], Any]:
            def make() -> Any:
                base = self.runner("sdxl").base()
                scheduler = schedulers.make("K_EULER", base.scheduler.config)
                pipe = cls(**{**base.components, "scheduler": scheduler})
                pipe.set_progress_bar_config(disable=True)
                return pipe

            return make

        image_uri, mask_uri = data_uri(self.image), data_uri(self.mask)
        sizes = {"width": size, "height": size}
        xl = {**common, **sizes, "scheduler": "K_EULER", "apply_watermark": False}
        xl_direct = {**common, "negative_prompt": ""}
        return [
            (
                "stable-diffusion",
                lambda: self.predict(
                    "stable-diffusion", {**common, **sizes, "scheduler": "K_EULER"}
                ),
                lambda: self.direct(
                    sd_pipe("stable-diffusion", diffusers.StableDiffusionPipeline),
                    lambda p: p(**common, **sizes, generator=gen()),
                ),
            ),
            (
                "stable-diffusion-img2img",
                lambda: self.predict(
                    "stable-diffusion-img2img",
                    {**common, "image": image_uri, "scheduler": "K_EULER"},
                ),
                lambda: self.direct(
                    sd_pipe("stable-diffusion-img2img", diffusers.StableDiffusionImg2ImgPipeline),
                    lambda p: p(**common, image=self.image, strength=0.8, generator=gen()),
                ),
            ),
            (
                "stable-diffusion-inpainting",
                lambda: self.predict(
                    "stable-diffusion-inpainting",
                    {
                        **common,
                        **sizes,
                        "image": image_uri,
                        "mask": mask_uri,
                        "scheduler": "K_EULER",
                    },
                ),
                lambda: self.direct(
                    sd_pipe(
                        "stable-diffusion-inpainting", diffusers.StableDiffusionInpaintPipeline
                    ),
                    lambda p: p(
                        **common, **sizes, image=self.image, mask_image=self.mask, generator=gen()
                    ),
                ),
            ),
            (
                "sdxl txt2img",
                lambda: self.predict("sdxl", xl),
                lambda: self.direct(
                    sdxl_pipe(diffusers.StableDiffusionXLPipeline),
                    lambda p: p(**xl_direct, **sizes, generator=gen()),
                ),
            ),
            (
                "sdxl img2img",
                lambda: self.predict("sdxl", {**xl, "image": image_uri}),
                lambda: self.direct(
                    sdxl_pipe(diffusers.StableDiffusionXLImg2ImgPipeline),
                    lambda p: p(**xl_direct, image=self.image, strength=0.8, generator=gen()),
                ),
            ),
            (
                "sdxl inpaint",
                lambda: self.predict("sdxl", {**xl, "image": image_uri, "mask": mask_uri}),
                lambda: self.direct(
                    sdxl_pipe(diffusers.StableDiffusionXLInpaintPipeline),
                    lambda p: p(
                        **xl_direct,
                        **sizes,
                        image=self.image,
                        mask_image=self.mask,
                        strength=0.8,
                        generator=gen(),
                    ),
                ),
            ),
        ]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, "weights")
        build_all(weights)
        # The direct calls run no safety checker, so neither does the server here: the
        # table shows what serving adds, not what the (optional) filter costs.
        settings = Settings(data_dir=Path(tmp, "data"), weights_dir=weights, safety_checker=False)
        with LiveServer(create_app(settings)) as server:
            family = Family(server, args.size, args.steps)
            cases = family.cases()
            for _, http_call, direct_call in cases:  # warm-up: loads, first-call costs
                http_call()
                direct_call()
            timings: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in cases}
            for round_index in range(args.rounds):
                for label, http_call, direct_call in cases:
                    pair = [("http", http_call), ("direct", direct_call)]
                    for kind, call in pair if round_index % 2 else reversed(pair):
                        # A block of calls per path, the first one dropped: torch keeps an
                        # OpenMP team per calling thread (the server's worker, the direct
                        # thread), and a team that just finished spins for a while, slowing
                        # whichever thread runs next. Steady calls are what a server sees.
                        block = [call() for _ in range(BLOCK)]
                        timings[label][0 if kind == "http" else 1].extend(block[1:])

            print(
                f"\nSD family, {args.size}x{args.size}, {args.steps} steps, K_EULER, "
                f"{args.rounds} rounds, medians (load average {os.getloadavg()[0]:.2f})"
            )
            print(f"{'model / mode':<30}{'direct':>12}{'HTTP':>12}{'ratio':>8}{'added':>12}")
            for label, (http_times, direct_times) in timings.items():
                h, d = statistics.median(http_times), statistics.median(direct_times)
                print(f"{label:<30}{ms(d):>12}{ms(h):>12}{h / d:>8.3f}{ms(h - d):>12}")

            modes = {label: call for label, call, _ in cases if label.startswith("sdxl")}
            same: list[float] = []
            alternating: list[float] = []
            for _ in range(args.rounds):
                for label in modes:
                    same.extend(modes[label]() for _ in range(2))
                for label in modes:
                    alternating.append(modes[label]())
                for label in reversed(list(modes)):
                    alternating.append(modes[label]())
            s, a = statistics.median(same), statistics.median(alternating)
            print("\nSDXL mode switching on shared modules (HTTP, all three modes mixed)")
            print(f"{'same mode twice in a row':<30}{ms(s):>12}")
            print(f"{'mode changes every request':<30}{ms(a):>12}{a / s:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
