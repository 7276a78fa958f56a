"""Inference beside a busy neighbour process, per threading setting: prints a table, never
passes or fails.

    python bench/contention.py                       # 256x256, 10 steps, 7 rounds
    python bench/contention.py --size 768 --steps 10 --rounds 5 --weights /tmp/tw

Each setting runs in its own fresh subprocess (OpenMP reads its environment once, when
torch loads libgomp), which loads the tiny SD 2.1 pipeline and calls it, then encodes the
PNG, on one long-lived thread as the server's worker does. Round by round, in an order that
rotates, every setting is timed idle and then beside one busy neighbour: a plain busy-loop
subprocess, pinned to nothing, that stops by itself after a bound. The machine is shared
and noisy, so the table shows medians over rounds; "vs idle default" divides by the
default setting's idle median, which is what an operator would otherwise get.

KMP_BLOCKTIME is not among the settings: it belongs to Intel's OpenMP runtime, and the torch
CPU wheels load GNU libgomp (``torch.__config__.parallel_info()``), which ignores it; the
libgomp knobs are OMP_WAIT_POLICY and GOMP_SPINCOUNT.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1234
PROMPT = "an astronaut riding a horse on mars"


@dataclass(frozen=True)
class Setting:
    label: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def settings(cores: int) -> list[Setting]:
    return [
        Setting("default"),
        Setting(f"threads={max(1, cores - 1)} (cores-1)", args=("--threads", str(cores - 1))),
        Setting("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
        Setting("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
        Setting("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}),
        Setting("GOMP_SPINCOUNT=100000", {"GOMP_SPINCOUNT": "100000"}),
        Setting("interop threads=1", args=("--interop", "1")),
        Setting("dynamic (repligate)", args=("--dynamic",)),
        Setting("dynamic + GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}, args=("--dynamic",)),
    ]


# -- the worker: one setting, one process ------------------------------------------------


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--interop", type=int)
    parser.add_argument("--dynamic", action="store_true")
    args = parser.parse_args(argv)

    from concurrent.futures import ThreadPoolExecutor

    import torch
    from diffusers import StableDiffusionPipeline

    from repligate.runners import schedulers
    from repligate.storage import encode

    if args.interop:
        torch.set_num_interop_threads(args.interop)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(args.weights / "stability-ai__stable-diffusion"),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = schedulers.make("K_EULER", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    thread = ThreadPoolExecutor(max_workers=1)  # the server's long-lived worker thread
    policy = None
    if args.dynamic:
        from repligate.runners.threads import ThreadPolicy

        policy = ThreadPolicy.for_device("cpu", None)
    if args.threads:
        thread.submit(torch.set_num_threads, args.threads).result()

    def on_step_end(pipe: object, step: int, timestep: object, kwargs: dict) -> dict:
        if policy is not None:
            policy.apply()
        return kwargs

    def call() -> tuple[float, int]:
        started = time.perf_counter()
        if policy is not None:
            policy.apply()
        image = pipe(
            prompt=PROMPT,
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            generator=torch.Generator("cpu").manual_seed(SEED),
            callback_on_step_end=on_step_end,
        ).images[0]
        encode.png(image, "out-0.png")
        return time.perf_counter() - started, torch.get_num_threads()

    for _ in range(2):
        thread.submit(call).result()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        elapsed, threads = thread.submit(call).result()
        print(f"{elapsed * 1000:.1f} {threads}", flush=True)


# -- the parent: rounds over every setting, idle and busy --------------------------------


BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


class Neighbour:
    """One busy process for the length of a measurement; it ends itself after a bound."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Neighbour:
        code = BUSY_LOOP.format(seconds=self.bound)
        self.process = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)  # running before the block starts, as a real neighbour would be
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class Worker:
    def __init__(self, setting: Setting, weights: Path, size: int, steps: int, log: Path) -> None:
        self.setting = setting
        self.log = log
        env = {**os.environ, **setting.env, "HF_HUB_OFFLINE": "1"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, __file__, "--worker", "--weights", str(weights)),
                    *("--size", str(size), "--steps", str(steps), *setting.args),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                text=True,
            )
        self.idle: list[float] = []
        self.busy: list[float] = []
        self.threads: tuple[int, int] = (0, 0)  # torch's count after an idle, a busy block

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            tail = self.log.read_text().splitlines()[-15:]
            raise SystemExit(f"{self.setting.label}: worker did not start:\n" + "\n".join(tail))

    def once(self) -> tuple[float, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        ms, threads = self.process.stdout.readline().split()
        return float(ms), int(threads)

    def block(self, calls: int) -> tuple[float, int]:
        results = [self.once() for _ in range(calls)]
        return statistics.median(r[0] for r in results), results[-1][1]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per block (median)")
    parser.add_argument("--weights", type=Path, help="tiny weights dir (built if not given)")
    parser.add_argument("--only", nargs="*", help="settings whose label starts with these")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    chosen = settings(cores)
    if args.only:
        chosen = [s for s in chosen if any(s.label.startswith(o) for o in args.only)]
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from repligate.testing.tiny_weights import build_all

            weights = Path(tmp)
            build_all(weights)
        print(
            f"{cores} cores, {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds "
            f"of {args.calls} calls; load average at start {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        workers = [
            Worker(s, weights, args.size, args.steps, Path(tmp) / f"worker-{i}.log")
            for i, s in enumerate(chosen)
        ]
        for w in workers:
            w.wait_ready()
        try:
            for round_ in range(args.rounds):
                order = workers[round_ % len(workers) :] + workers[: round_ % len(workers)]
                for w in order:
                    idle_ms, idle_threads = w.block(args.calls)
                    # Bounded so that a crashed bench leaves no spinning process behind.
                    with Neighbour(bound=120 + 30 * args.calls):
                        busy_ms, busy_threads = w.block(args.calls)
                    w.idle.append(idle_ms)
                    w.busy.append(busy_ms)
                    w.threads = (idle_threads, busy_threads)
                    print(
                        f"  {w.setting.label}: idle {idle_ms:.0f} ms ({idle_threads} threads), "
                        f"busy {busy_ms:.0f} ms ({busy_threads}), load {os.getloadavg()[0]:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.close()
    report(workers)


def report(workers: list[Worker]) -> None:
    """Medians over rounds. Ratios are taken within each round first (busy over idle of the
    same setting; over the default's idle of the same round), so drift cancels."""
    base = workers[0].idle

    def per_round(top: list[float], bottom: list[float]) -> float:
        return statistics.median(t / b for t, b in zip(top, bottom, strict=True))

    head = ("setting", "idle ms", "busy ms", "ratio", "idle/default", "busy/default", "threads")
    rows = [
        (
            w.setting.label,
            f"{statistics.median(w.idle):.0f}",
            f"{statistics.median(w.busy):.0f}",
            f"{per_round(w.busy, w.idle):.2f}",
            f"{per_round(w.idle, base):.2f}",
            f"{per_round(w.busy, base):.2f}",
            f"{w.threads[0]} / {w.threads[1]}",
        )
        for w in workers
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(head)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
    print(
        "ratio: busy over idle; /default: over the default setting's idle; threads: torch's "
        "count at the end of an idle / a busy block. Goal: busy/default <= 1.6, idle/default ~1."
    )


if __name__ == "__main__":
    main()
