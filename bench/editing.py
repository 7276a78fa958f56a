"""The image editing models through HTTP against a direct call of the same runner: prints
one table, never passes or fails.

    python bench/editing.py                       # 640x480, 5 rounds, tiny weights
    python bench/editing.py --rounds 9 --size 1024x768 --weights DIR

One function per model (``bench_<model>``) returns its rows; ``main`` prints them. Each
starts from one live repligate server (uvicorn, in-process worker, SQLite, local files)
on the tiny random weights (``repligate.testing.tiny_weights``; real weights with
``--weights``), and, round by round so that drift cancels, times:

- HTTP: ``POST /replicate/v1/predictions`` (sync, the image as a data URI) until the
  succeeded prediction comes back, then the download of its output file;
- direct: the server's own runner object (``provider.runner(spec).run``, the same
  session and code) on one long-lived thread, given the already-decoded input file,
  returning the encoded PNG.

The first HTTP call of a model loads its session; a warm-up call on each side comes
before the rounds, so the table compares steady states. The ratio is HTTP / direct.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from PIL import Image

from repligate.app import create_app
from repligate.events import Event
from repligate.fetch import FetchedFile
from repligate.models import rembg
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer


@dataclass(frozen=True)
class Row:
    model: str
    case: str
    http_s: float
    direct_s: float

    @property
    def ratio(self) -> float:
        return self.http_s / self.direct_s


class _Context:
    """The RunContext of a direct call: nothing reported anywhere, never canceled."""

    prediction_id = "bench"

    def emit(self, event: Event) -> None:
        pass

    def canceled(self) -> bool:
        return False


@dataclass
class Bench:
    """What every model's function shares: the server, a keep-alive HTTP client, the one
    thread that makes the direct calls, and the sizes asked for."""

    server: LiveServer
    http: httpx.Client
    thread: ThreadPoolExecutor
    rounds: int
    size: tuple[int, int]

    def predict(self, version: str, inputs: dict[str, Any]) -> float:
        body = {"version": version, "input": inputs}
        started = time.perf_counter()
        answer = self.http.post("/replicate/v1/predictions", json=body).json()
        if answer["status"] != "succeeded":
            raise SystemExit(f"{version} did not succeed: {answer['error']}")
        outputs = answer["output"] if isinstance(answer["output"], list) else [answer["output"]]
        for url in outputs:
            self.http.get(url).raise_for_status()
        return time.perf_counter() - started

    def direct(self, call: Callable[[], Any]) -> float:
        def timed() -> float:
            started = time.perf_counter()
            call()
            return time.perf_counter() - started

        return self.thread.submit(timed).result()

    def compare(
        self, model: str, case: str, http: Callable[[], float], direct: Callable[[], float]
    ) -> Row:
        http(), direct()  # warm-up: sessions load, caches fill
        http_times, direct_times = [], []
        for index in range(self.rounds):
            # Alternate which side goes first, so neither always follows the other.
            if index % 2:
                direct_times.append(direct())
                http_times.append(http())
            else:
                http_times.append(http())
                direct_times.append(direct())
        return Row(model, case, statistics.median(http_times), statistics.median(direct_times))


def photo(size: tuple[int, int]) -> bytes:
    picture = Image.effect_noise(size, 64).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def bench_rembg(bench: Bench) -> list[Row]:
    """cjwbw/rembg: one image of ``bench.size``, as a data URI over HTTP."""
    spec = rembg.MODEL
    data = photo(bench.size)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    runner = bench.server.container.provider.runner(spec)
    fetcher = bench.server.container.provider.env().fetcher
    image = FetchedFile("image", data, "image/png", fetcher.max_pixels)
    width, height = bench.size
    return [
        bench.compare(
            spec.ref,
            f"{width}x{height}",
            lambda: bench.predict(spec.version, {"image": uri}),
            lambda: bench.direct(lambda: runner.run({"image": image}, _Context())),
        )
    ]


BENCHES: list[Callable[[Bench], list[Row]]] = [bench_rembg]


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height or width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=_size, default=(640, 480), help="WxH of the input")
    parser.add_argument("--weights", type=Path, help="weights dir (default: tiny, built now)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from repligate.testing.tiny_weights import build_all

            weights = Path(tmp, "weights")
            build_all(weights)
        settings = Settings(data_dir=Path(tmp, "data"), weights_dir=weights, access_log=False)
        with (
            LiveServer(create_app(settings)) as server,
            httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {server.make_token()}", "Prefer": "wait=60"},
                timeout=120,
            ) as http,
            ThreadPoolExecutor(max_workers=1) as thread,
        ):
            bench = Bench(server, http, thread, args.rounds, args.size)
            rows = [row for run in BENCHES for row in run(bench)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmedian of {args.rounds} rounds; load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'model':<34}{'case':<12}{'direct ms':>11}{'HTTP ms':>11}{'ratio':>8}")
    for row in rows:
        print(
            f"{row.model:<34}{row.case:<12}{row.direct_s * 1000:>11.1f}"
            f"{row.http_s * 1000:>11.1f}{row.ratio:>8.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
