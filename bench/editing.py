"""The image editing models through HTTP against a direct call of the same runner: prints
one table, never passes or fails.

    python bench/editing.py               # 5 rounds
    python bench/editing.py --rounds 9

Builds the tiny random-weight models it needs in a temp dir and starts a live repligate
server. Each model has one function (``bench_<model>``) that returns its row. Round by
round (so drift cancels) it runs the same prediction both ways: through
``POST /v1/predictions`` with ``Prefer: wait`` (an image sent as a data URI; the output
PNG stored and its URL returned), and directly: the server's own runner object called on
one long-lived thread with the same image already fetched, returning the encoded PNG.
One warm-up of each way is dropped. The ratio is HTTP over direct, from this one run.
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

import httpx
from PIL import Image

from repligate.app import create_app
from repligate.events import Event
from repligate.fetch import FetchedFile
from repligate.models import all_models
from repligate.runners.weights import RANDOM_WEIGHTS_MARKER
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from repligate.testing.tiny_weights import BUILDERS

# The tiny weights each model's bench needs (tiny_weights.BUILDERS keys).
WEIGHTS = ["sujaykhandekar__object-removal", "cjwbw__rembg"]

Row = tuple[str, float, float]  # (model, HTTP median seconds, direct median seconds)


class DirectContext:
    prediction_id = "direct"

    def emit(self, event: Event) -> None:
        pass

    def canceled(self) -> bool:
        return False


class Bench:
    def __init__(self, server: LiveServer, rounds: int) -> None:
        self.server = server
        self.rounds = rounds
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
            timeout=120,
        )
        self.thread = ThreadPoolExecutor(max_workers=1)  # the direct calls' one thread
        self.specs = {spec.ref: spec for spec in all_models()}

    def predict(self, ref: str, inputs: dict[str, Any]) -> float:
        body = {"version": self.specs[ref].version, "input": inputs}
        started = time.perf_counter()
        answer = self.http.post("/v1/predictions", json=body).json()
        elapsed = time.perf_counter() - started
        if answer["status"] != "succeeded":
            raise SystemExit(f"{ref} did not succeed: {answer.get('error')}")
        return elapsed

    def direct(self, ref: str, inputs: dict[str, Any]) -> float:
        runner = self.server.container.provider.runner(self.specs[ref])

        def run() -> float:
            started = time.perf_counter()
            runner.run(inputs, DirectContext())
            return time.perf_counter() - started

        return self.thread.submit(run).result()

    def compare(self, ref: str, http: Callable[[], float], direct: Callable[[], float]) -> Row:
        http(), direct()  # warm-up: loading, first-call allocations
        over_http, directly = [], []
        for _ in range(self.rounds):
            over_http.append(http())
            directly.append(direct())
        return ref, statistics.median(over_http), statistics.median(directly)


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def bench_object_removal(bench: Bench) -> Row:
    """A 512x384 picture (a Mandelbrot render: a PNG that compresses as photos do, so
    the data URI is photo-sized): segmentation at a short side of 400, EdgeConnect at
    256x256, a 256x256 PNG out."""
    ref = "sujaykhandekar/object-removal"
    data = png_bytes(Image.effect_mandelbrot((512, 384), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB"))
    objects = "person,car"
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    fetched = FetchedFile("image_path", data, "image/png")
    return bench.compare(
        ref,
        lambda: bench.predict(ref, {"image_path": uri, "objects_to_remove": objects}),
        lambda: bench.direct(ref, {"image_path": fetched, "objects_to_remove": objects}),
    )


def bench_rembg(bench: Bench) -> Row:
    """A 640x480 picture (a Mandelbrot render, photo-sized as a PNG): U²-Net at 320x320 on
    onnxruntime through rembg, an RGBA PNG of the input's size out."""
    ref = "cjwbw/rembg"
    data = png_bytes(Image.effect_mandelbrot((640, 480), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB"))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    fetched = FetchedFile("image", data, "image/png")
    return bench.compare(
        ref,
        lambda: bench.predict(ref, {"image": uri}),
        lambda: bench.direct(ref, {"image": fetched}),
    )


BENCHES: list[Callable[[Bench], Row]] = [bench_object_removal, bench_rembg]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        for key in WEIGHTS:
            BUILDERS[key](weights / key)
            (weights / key / RANDOM_WEIGHTS_MARKER).write_text("tiny random weights\n")
        settings = Settings(data_dir=Path(tmp) / "data", weights_dir=weights)
        with LiveServer(create_app(settings)) as server:
            bench = Bench(server, args.rounds)
            rows = [run(bench) for run in BENCHES]
    print(f"tiny random weights, CPU, median of {args.rounds} rounds (one warm-up dropped)")
    print(f"{'model':<32} {'HTTP s':>9} {'direct s':>9} {'HTTP/direct':>12}")
    for ref, over_http, directly in rows:
        print(f"{ref:<32} {over_http:>9.3f} {directly:>9.3f} {over_http / directly:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
