"""What serving costs on top of calling the pipeline: prints tables, never passes or fails.

    python bench/overhead.py                 # 512x512 20 steps K_EULER, plus 64x64 2 steps
    python bench/overhead.py --rounds 30 --size 768 --steps 30

First a summary: the ms a small sync prediction (64x64, 2 steps; create + output
download) adds over the direct call, beside the main case's ratio (512x512, 20 steps).
The safety checker is off on both sides (the direct call has none).

It builds the tiny random-weight pipelines in a temp dir, starts a live repligate server
(uvicorn, in-process workers, SQLite, local files) and, round by round so that drift
cancels (the order rotates each round), runs the same prediction four ways, each a few
times in a row (a block):

- direct: the server's own cached pipeline object, called on one long-lived thread with
  the same settings (seed, size, steps, scheduler, guidance), then PNG-encoded;
- direct on a second long-lived thread: the control for thread switching (torch keeps an
  OpenMP team per calling thread; the server's worker is such a second thread);
- runner: the model's runner (``runner.run``) on the first thread, outside the server;
- HTTP: ``POST /replicate/v1/predictions`` (sync) over a keep-alive connection, then the
  download of its output file (what a client does to get the image).

The first call of each block follows a switch of thread, which costs torch on its own
(research/serving-overhead.md, lesson 1) and which a server with one worker thread never
pays; it is reported apart, and "steady" numbers leave it out.

Then it splits the HTTP time with the prediction's own timestamps, and times each step the
server adds (validation, DB writes, queue hand-off, PNG, storage, wake-up) in isolation,
with the server's own functions, so no timing code sits in the serving path. The machine
should be otherwise idle: the load average is printed because other processes on 2 cores
move every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
from rich.console import Console
from rich.table import Table
from steps import StepTimer, steps_table

from repligate.app import create_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer

OWNER, NAME = "stability-ai", "stable-diffusion"
# Piped output (make bench | tee) gets a fixed width instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass
class Case:
    width: int
    height: int
    steps: int
    rounds: int
    scheduler: str
    seed: int = 42
    guidance: float = 7.5
    prompt: str = "a photo of an astronaut riding a horse on mars"

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}, {self.steps} steps"

    def input(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.steps,
            "scheduler": self.scheduler,
            "guidance_scale": self.guidance,
            "seed": self.seed,
        }


PATHS = ("direct", "other", "runner", "http")
LABELS = {
    "direct": "direct: pipeline + PNG, one thread",
    "other": "direct on a 2nd thread",
    "runner": "runner.run, outside the server",
    "http": "HTTP sync POST /replicate/v1/predictions + GET of the output",
}
Marks = tuple[float, float, float, float, float]


@dataclass
class Results:
    # times[path][round]: that round's block of calls, in order. The first call of a block
    # follows a switch of path, and for "other" and "http" a switch of thread.
    times: dict[str, list[list[float]]] = field(
        default_factory=lambda: {path: [] for path in PATHS}
    )
    # Steady HTTP calls (not first in their block): (request sent, created, started,
    # completed, response read), as wall-clock seconds.
    marks: list[Marks] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def steady(self, path: str) -> list[float]:
        return [t for block in self.times[path] for t in block[1:]]

    def first(self, path: str) -> list[float]:
        return [block[0] for block in self.times[path]]

    def added(self, path: str) -> list[float]:
        """Per round: the path's steady median minus direct's, so drift cancels."""
        return [
            med(block[1:]) - med(direct[1:])
            for block, direct in zip(self.times[path], self.times["direct"], strict=True)
        ]


class _QuietContext:
    """A RunContext that keeps nothing: the runner outside any server."""

    prediction_id = "bench"

    def emit(self, event: Any) -> None:
        pass

    def canceled(self) -> bool:
        return False


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, server: LiveServer, token: str) -> None:
        self.server = server
        container = server.container
        self.spec = container.service.registry.model(OWNER, NAME)
        self.runner: Any = container.provider.runner(self.spec)
        self.png_level = container.settings.png_compress_level
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        # ONE long-lived thread for every direct call: torch gives each calling thread its
        # own OpenMP team, so a new thread per call would measure something else.
        self.direct_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")
        self.other_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="other")
        self._pipes: dict[str, Any] = {}

    def close(self) -> None:
        self.direct_thread.shutdown()
        self.other_thread.shutdown()
        self.http.close()

    def _pipe(self, scheduler: str) -> Any:
        """The server's cached pipeline, with the scheduler the runner would use."""
        if scheduler not in self._pipes:
            from repligate.runners import schedulers

            base = self.runner.pipeline()  # the same object the server's worker calls
            pipe = type(base)(
                **{
                    **base.components,
                    "scheduler": schedulers.make(scheduler, base.scheduler.config),
                },
                requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            self._pipes[scheduler] = pipe
        return self._pipes[scheduler]

    def direct_once(
        self, case: Case, thread: ThreadPoolExecutor | None = None
    ) -> tuple[float, bytes]:
        import torch

        from repligate.storage import encode

        pipe = self._pipe(case.scheduler)

        def call() -> tuple[float, bytes]:
            started = time.perf_counter()
            result = pipe(
                prompt=[case.prompt],
                width=case.width,
                height=case.height,
                guidance_scale=case.guidance,
                num_inference_steps=case.steps,
                generator=torch.Generator("cpu").manual_seed(case.seed),
            )
            data = encode.png(result.images[0], "out-0.png", self.png_level).data
            return time.perf_counter() - started, data

        return (thread or self.direct_thread).submit(call).result()

    def runner_once(self, case: Case) -> float:
        from repligate import inputs

        run_input = inputs.validate(self.spec, case.input())

        def call() -> float:
            started = time.perf_counter()
            self.runner.run(run_input, _QuietContext())
            return time.perf_counter() - started

        return self.direct_thread.submit(call).result()

    def http_once(self, case: Case) -> tuple[float, dict[str, Any], float, float]:
        body = {"version": f"{OWNER}/{NAME}:{self.spec.version}", "input": case.input()}
        sent_wall, started = time.time(), time.perf_counter()
        response = self.http.post("/replicate/v1/predictions", json=body)
        read_wall = time.time()
        answer = response.json()
        if response.status_code != 200 or answer.get("status") != "succeeded":
            raise SystemExit(f"HTTP prediction did not succeed: {response.status_code} {answer}")
        image = self.http.get(answer["output"][0])
        elapsed = time.perf_counter() - started
        if image.status_code != 200 or not image.content.startswith(b"\x89PNG"):
            raise SystemExit(f"the output did not download: {image.status_code}")
        return elapsed, answer, sent_wall, read_wall

    def _call(self, path: str, case: Case, results: Results, first: bool) -> float:
        if path == "direct":
            return self.direct_once(case)[0]
        if path == "other":
            return self.direct_once(case, self.other_thread)[0]
        if path == "runner":
            return self.runner_once(case)
        elapsed, answer, sent, read = self.http_once(case)
        results.bodies.append(answer)
        if not first:
            stamps = (answer["created_at"], answer["started_at"], answer["completed_at"])
            created, started, completed = (_epoch(s) for s in stamps)
            results.marks.append((sent, created, started, completed, read))
        return elapsed

    def run_case(self, case: Case, block: int) -> Results:
        results = Results()
        # Warm-up, not counted: pipeline load, first-call allocations, the HTTP connection.
        for path in PATHS:
            self._call(path, case, Results(), first=True)
        for index in range(case.rounds):
            # Rotate the order: every path runs in every position (and after every other
            # path) equally often, so neither drift nor what ran just before favours one.
            order = PATHS[index % 4 :] + PATHS[: index % 4]
            for path in order:
                results.times[path].append(
                    [self._call(path, case, results, first=i == 0) for i in range(block)]
                )
        return results

    def same_image(self, case: Case, results: Results) -> bool:
        """Both paths made the same PNG: the comparison is of the same work."""
        url = results.bodies[-1]["output"][0]
        served = self.http.get(url).content
        return served == self.direct_once(case)[1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_end_to_end(rows: list[tuple[Case, Results, bool]], block: int) -> None:
    table = Table(
        title=f"End to end (ms). Each round runs every path {block} times in a row; the "
        "first call of each block (right after another path, maybe on another thread) is "
        "shown apart; the rest are 'steady'. added = median over rounds of (steady − direct)"
    )
    for column, justify in (("case", "left"), ("path", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for column in ("steady median", "min", "max", "÷ direct", "added", "first-call extra"):
        table.add_column(column, justify="right")
    for case, r, same in rows:
        direct = med(r.steady("direct"))
        for index, path in enumerate(PATHS):
            steady = r.steady(path)
            table.add_row(
                f"{case.label}, {case.rounds} rounds" if index == 0 else "",
                LABELS[path],
                ms(med(steady)),
                ms(min(steady)),
                ms(max(steady)),
                f"{med(steady) / direct:.3f}",
                "" if path == "direct" else ms(med(r.added(path))),
                ms(med(r.first(path)) - med(steady)),
            )
        table.add_row(
            "", "HTTP output PNG == direct PNG", "yes" if same else "NO", end_section=True
        )
    console.print(table)


def print_summary(rows: list[tuple[Case, Results, bool]]) -> None:
    """What a small prediction adds (ms) beside how a large one compares (ratio)."""
    table = Table(title="Summary: HTTP (sync create + output download) against the direct call")
    for column in ("case", "rounds", "direct median", "HTTP median", "added (ms)", "÷ direct"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for case, r, _ in sorted(rows, key=lambda row: row[0].width * row[0].steps):
        pairs = zip(r.times["http"], r.times["direct"], strict=True)
        ratio = med([med(block[1:]) / med(base[1:]) for block, base in pairs])
        direct, http, added = med(r.steady("direct")), med(r.steady("http")), med(r.added("http"))
        cells = (ms(direct), ms(http), ms(added), f"{ratio:.3f}")
        table.add_row(case.label, str(case.rounds), *cells)
    console.print(table)


def print_split(rows: list[tuple[Case, Results, bool]]) -> None:
    table = Table(title="Steady HTTP predictions split by their own timestamps, medians (ms)")
    table.add_column("segment")
    for case, _, _ in rows:
        table.add_column(case.label, justify="right")
    segments = [
        ("request sent → created_at (HTTP in, auth, body, validation)", 0, 1),
        ("created_at → started_at (DB insert, queue hand-off)", 1, 2),
        ("started_at → completed_at (claim, runner, logs, storage)", 2, 3),
        ("completed_at → response read (DB update, wake-up, reply)", 3, 4),
    ]
    for label, a, b in segments:
        table.add_row(label, *[ms(med([m[b] - m[a] for m in r.marks])) for _, r, _ in rows])
    table.add_row(
        "  started → completed, minus direct's steady median",
        *[ms(med([m[3] - m[2] for m in r.marks]) - med(r.steady("direct"))) for _, r, _ in rows],
    )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the main case")
    parser.add_argument("--block", type=int, default=3, help="calls of a path in a row (>= 2)")
    parser.add_argument("--size", type=int, default=512, help="width and height (x64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="K_EULER")
    parser.add_argument("--small-rounds", type=int, default=20, help="rounds of 64x64, 2 steps")
    parser.add_argument("--step-repeats", type=int, default=200, help="repeats per timed step")
    parser.add_argument("--weights", type=Path, help="tiny weights already built (else built)")
    args = parser.parse_args(argv)
    if args.block < 2:
        parser.error("--block must be at least 2: the first call of each block is set apart")

    import torch

    from repligate.testing.tiny_weights import build_all

    cases = [
        Case(args.size, args.size, args.steps, args.rounds, args.scheduler),
        Case(64, 64, 2, args.small_rounds, args.scheduler),
    ]
    with tempfile.TemporaryDirectory(prefix="repligate-bench-") as tmp:
        root = Path(tmp)
        weights = args.weights
        if weights is None:
            console.print("building tiny random-weight pipelines ...")
            weights = root / "weights"
            build_all(weights)
        # The direct call runs no safety checker, so the server runs none either.
        settings = Settings(data_dir=root / "data", weights_dir=weights, safety_checker=False)
        with LiveServer(create_app(settings)) as server:
            token = server.make_token("bench")
            bench = Bench(server, token)
            try:
                rows = []
                for case in cases:
                    console.print(f"running {case.label} x {case.rounds} rounds ...")
                    results = bench.run_case(case, args.block)
                    rows.append((case, results, bench.same_image(case, results)))
                timer = StepTimer(server, token, bench.spec, cases[0].input(), args.step_repeats)
                steps = timer.run(rows[0][1].bodies[-1], settings)
            finally:
                bench.close()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(
        f"load average at the end {load} (other processes skew everything); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; log flush every {settings.log_flush_interval} s, "
        f"PNG level {settings.png_compress_level}"
    )
    print_summary(rows)
    print_end_to_end(rows, args.block)
    print_split(rows)
    console.print(steps_table(steps, f"{cases[0].label}, {args.step_repeats} repeats"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
