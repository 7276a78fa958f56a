"""OpenAI's images API beside the native route, for the same prediction: prints a table,
never passes or fails.

    python bench/openai.py                   # 5 rounds, 64x64 2 steps and 256x256 8 steps
    python bench/openai.py --rounds 9

It builds the tiny random-weight pipelines in a temp dir and starts a live repligate
server (uvicorn, in-process worker, SQLite, local files). Each round runs, in an order
that alternates so drift cancels, the same stable-diffusion prediction (prompt, seed,
size, steps, scheduler) three ways, each until the user holds the image bytes:

- native: ``POST /v1/models/stability-ai/stable-diffusion/predictions`` with
  ``Prefer: wait``, then a GET of the output URL (what a Replicate client does);
- openai url: the official ``openai`` client's ``images.generate(response_format="url")``,
  then a GET of the URL;
- openai b64: ``images.generate(response_format="b64_json")`` (the bytes in the answer).

Medians and their ratio to native. Both OpenAI calls are predictions made by the same
service and waited for by the same ``service.wait``; what differs is the mapping, the
usage measure in the answer, and (b64) the base64 body instead of a second request.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# This file's own folder comes first on sys.path when run as a script, and this file is
# named openai.py: take the folder out so `import openai` finds the client.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import httpx  # noqa: E402
import openai  # noqa: E402

from repligate.app import create_app  # noqa: E402
from repligate.settings import Settings  # noqa: E402
from repligate.testing.live_server import LiveServer  # noqa: E402
from repligate.testing.tiny_weights import build_all  # noqa: E402

MODEL = "stability-ai/stable-diffusion"
CASES = [(64, 2), (256, 8)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repligate-bench-openai-") as tmp:
        weights = Path(tmp) / "weights"
        build_all(weights)
        settings = Settings(
            data_dir=Path(tmp) / "data",
            weights_dir=weights,
            log_flush_interval=0.0,
            safety_checker=False,
            concurrency_per_device=1,
        )
        with LiveServer(create_app(settings)) as server:
            token = server.make_token()
            rows = [measure(server.url, token, size, steps, args.rounds) for size, steps in CASES]
    load = os.getloadavg()[0]
    print(f"\nimages.generate vs native create+download, median of {args.rounds} rounds")
    print(f"(load average {load:.2f} on {os.cpu_count()} cores; ratios compare one run)\n")
    header = f"{'case':<18}{'native ms':>11}{'openai url ms':>15}{'ratio':>7}"
    header += f"{'openai b64 ms':>15}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for label, native, url, b64 in rows:
        print(
            f"{label:<18}{native:>11.1f}{url:>15.1f}{url / native:>7.2f}"
            f"{b64:>15.1f}{b64 / native:>7.2f}"
        )
    return 0


def measure(
    base: str, token: str, size: int, steps: int, rounds: int
) -> tuple[str, float, float, float]:
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    client = openai.OpenAI(api_key=token, base_url=f"{base}/v1", max_retries=0, timeout=120)
    options = {"num_inference_steps": steps, "scheduler": "K_EULER", "seed": 42}

    def native() -> bytes:
        body = {"input": {"prompt": "a red fox", "width": size, "height": size, **options}}
        created = http.post(
            f"{base}/v1/models/{MODEL}/predictions", json=body, headers={"Prefer": "wait"}
        ).json()
        assert created["status"] == "succeeded", created
        return http.get(created["output"][0]).content

    def openai_url() -> bytes:
        result = client.images.generate(
            model=MODEL, prompt="a red fox", size=f"{size}x{size}", extra_body=options
        )
        assert result.data[0].url is not None
        return http.get(result.data[0].url).content

    def openai_b64() -> bytes:
        result = client.images.generate(
            model=MODEL,
            prompt="a red fox",
            size=f"{size}x{size}",
            response_format="b64_json",
            extra_body=options,
        )
        assert result.data[0].b64_json is not None
        return base64.b64decode(result.data[0].b64_json)

    ways: list[Callable[[], bytes]] = [native, openai_url, openai_b64]
    times: dict[str, list[float]] = {way.__name__: [] for way in ways}
    reference = native()  # warm-up: the pipeline loads; also the bytes all three must give
    for round_ in range(rounds):
        order = ways if round_ % 2 == 0 else list(reversed(ways))
        for way in order:
            started = time.perf_counter()
            image = way()
            times[way.__name__].append((time.perf_counter() - started) * 1000)
            assert image == reference, f"{way.__name__} gave other bytes"
    http.close()
    client.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    label = f"{size}x{size}, {steps} steps"
    return label, medians["native"], medians["openai_url"], medians["openai_b64"]


if __name__ == "__main__":
    raise SystemExit(main())
