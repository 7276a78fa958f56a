"""The Flux LoRA models through HTTP against a direct diffusers call, and what a LoRA
switch costs: prints tables, never passes or fails.

    python bench/flux.py                       # 1:1 (1024 px), default steps, 2 rounds
    python bench/flux.py --rounds 3 --dev-steps 28 --schnell-steps 4

Builds the tiny random-weight Flux pipelines in a temp dir, serves LoRA files from a
loopback HTTP server (allowed for this server only) and starts a live repligate server.

Table 1, per model, round by round (so drift cancels): ``POST /replicate/v1/predictions``
(sync, webp output) against a FluxPipeline built around the server's own loaded modules,
called on one long-lived thread with the same seed, size, steps and guidance, then
WebP-encoded the same way.

Table 2 (schnell): a prediction with no LoRA; with a LoRA never seen (cold: downloaded
into the cache, then loaded); with a LoRA already in the disk cache but not the previous
prediction's (warm); and the previous prediction's LoRA again. Each LoRA is loaded into
the transformer for its prediction and unloaded after, so "again" costs as "warm" but for
the cache lookup.
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
from repligate.models import all_models
from repligate.runners.flux import ASPECT_RATIOS
from repligate.runners.weights import RANDOM_WEIGHTS_MARKER
from repligate.settings import Settings
from repligate.storage import encode
from repligate.testing import tiny_flux
from repligate.testing.file_server import FileServer
from repligate.testing.live_server import LiveServer

SEED = 1234
PROMPT = "a red fox"


def build_weights(root: Path) -> None:
    for key, build in tiny_flux.BUILDERS.items():
        build(root / key)
        (root / key / RANDOM_WEIGHTS_MARKER).write_text("tiny random weights\n")


class Bench:
    def __init__(self, server: LiveServer, files: FileServer) -> None:
        self.server, self.files = server, files
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
            timeout=600,
        )
        self.thread = ThreadPoolExecutor(max_workers=1)  # the direct calls' one thread
        self.specs = {spec.name: spec for spec in all_models()}

    def predict(self, model: str, inputs: dict[str, Any]) -> float:
        body = {"version": self.specs[model].version, "input": {**inputs, "seed": SEED}}
        started = time.perf_counter()
        answer = self.http.post("/replicate/v1/predictions", json=body).json()
        elapsed = time.perf_counter() - started
        if answer["status"] != "succeeded":
            raise SystemExit(f"{model} did not succeed: {answer['error']}")
        return elapsed

    def direct(self, model: str, steps: int, guidance: float, max_sequence_length: int) -> float:
        import torch

        loaded = self.server.container.provider.runner(self.specs[model]).text_to_image()
        width, height = ASPECT_RATIOS["1:1"]

        def run() -> float:
            started = time.perf_counter()
            scheduler = type(loaded.scheduler).from_config(loaded.scheduler.config)
            pipe = type(loaded)(**{**loaded.components, "scheduler": scheduler})
            pipe.set_progress_bar_config(disable=True)
            images = pipe(
                prompt=[PROMPT],
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                max_sequence_length=max_sequence_length,
                generator=torch.Generator("cpu").manual_seed(SEED),
            ).images
            for index, image in enumerate(images):
                encode.webp(image, f"out-{index}.webp", 80)
            return time.perf_counter() - started

        return self.thread.submit(run).result()


def overhead_table(bench: Bench, rounds: int, schnell_steps: int, dev_steps: int) -> None:
    cases = [
        ("flux-schnell-lora", schnell_steps, 0.0, 256),
        ("flux-dev-lora", dev_steps, 3.5, 512),
    ]
    print(f"\nHTTP prediction vs direct diffusers call (1024x1024, webp), {rounds} rounds")
    print(f"{'model':<20} {'steps':>5} {'http s':>8} {'direct s':>9} {'ratio':>6}")
    for model, steps, guidance, tokens in cases:
        inputs = {"prompt": PROMPT, "num_inference_steps": steps, "output_format": "webp"}
        if model == "flux-dev-lora":
            inputs["guidance_scale"] = guidance
        bench.predict(model, inputs)  # loads the weights
        http, direct = [], []
        for _ in range(rounds):
            http.append(bench.predict(model, inputs))
            direct.append(bench.direct(model, steps, guidance, tokens))
        h, d = statistics.median(http), statistics.median(direct)
        print(f"{model:<20} {steps:>5} {h:>8.2f} {d:>9.2f} {h / d:>6.2f}")


def lora_table(bench: Bench, rounds: int, steps: int) -> None:
    data = tiny_flux.lora_bytes(seed=5)
    inputs = {"prompt": PROMPT, "num_inference_steps": steps, "output_format": "webp"}
    bench.files.files["/warm/a.safetensors"] = data
    bench.files.files["/warm/b.safetensors"] = tiny_flux.lora_bytes(seed=6)
    warm_a = f"{bench.files.url}/warm/a.safetensors"
    warm_b = f"{bench.files.url}/warm/b.safetensors"
    model = "flux-schnell-lora"
    bench.predict(model, {**inputs, "hf_lora": warm_a})
    bench.predict(model, {**inputs, "hf_lora": warm_b})
    times: dict[str, list[float]] = {"no LoRA": [], "cold": [], "warm": [], "same again": []}
    for index in range(rounds):
        path = f"/cold/{index}.safetensors"
        bench.files.files[path] = data
        times["no LoRA"].append(bench.predict(model, inputs))
        times["cold"].append(bench.predict(model, {**inputs, "hf_lora": bench.files.url + path}))
        times["warm"].append(bench.predict(model, {**inputs, "hf_lora": warm_a}))
        times["same again"].append(bench.predict(model, {**inputs, "hf_lora": warm_a}))
        bench.predict(model, {**inputs, "hf_lora": warm_b})  # so warm_a is not the last
    base = statistics.median(times["no LoRA"])
    size_kib = len(data) / 1024
    print(f"\nLoRA switch, {model}, {steps} steps, 1024x1024, LoRA {size_kib:.0f} KiB", end="")
    print(f", {rounds} rounds")
    print(f"{'case':<12} {'http s':>8} {'vs no LoRA':>11}")
    for case, values in times.items():
        median = statistics.median(values)
        print(f"{case:<12} {median:>8.2f} {median / base:>11.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--schnell-steps", type=int, default=4)
    parser.add_argument("--dev-steps", type=int, default=28)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, FileServer() as files:
        root = Path(tmp)
        build_weights(root / "weights")
        settings = Settings(
            data_dir=root / "data",
            weights_dir=root / "weights",
            log_flush_interval=0.0,
            public_base_url=None,
            fetch_allowed_networks=["127.0.0.0/8"],
            hub_url=files.url,
        )
        with LiveServer(create_app(settings)) as server:
            bench = Bench(server, files)
            overhead_table(bench, args.rounds, args.schnell_steps, args.dev_steps)
            lora_table(bench, args.rounds, args.schnell_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
