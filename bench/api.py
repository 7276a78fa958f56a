"""How many requests per second the control plane answers: prints a table, never passes or
fails.

    python bench/api.py                      # 3 rounds of 5 s per measurement
    python bench/api.py --rounds 5 --seconds 8 --weights /tmp/tiny-weights
    python bench/api.py --scaled             # + PostgreSQL/Celery, 1 and 2 API processes

Two servers, each in its own process and started as users start them: the yardstick, a
FastAPI app with one ``async def`` JSON endpoint under the uvicorn configuration of
``repligate serve`` (``serving.uvicorn_config``); and ``repligate serve`` itself (tiny
random-weight pipelines, safety checker off, SQLite, local files, its in-process worker),
on a fresh data directory each round. Each round measures, back to back:

1. ``GET /v1/predictions/<id>`` on the bare app (a constant two-field object);
2. ``GET /v1/predictions/<id>`` on repligate: the key checked, the row read from the
   database, the full prediction object (a finished prediction with an output file);
3. ``POST /v1/predictions`` (async, answered ``starting``) on repligate, while its worker
   runs the predictions that pile up (64x64, 2 steps each).

The load comes from wrk when installed (``-t2 -c8``), else from an async httpx client in
its own process (slower itself: only the ratios mean much); the table says which. It
targets 127.0.0.1 only and stops after ``--seconds``. On 2 shared cores the load
generator, the server and everyone else compete: compare within a round (the ratios),
read the medians, and the server's CPU per request (steadier than its rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

VERSION = "ac732df83cea7fff18b8472768c88ad041fa750ff7682a21affe81863cbe77e4"
SMALL_INPUT = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2}
CONNECTIONS = 8
THREADS = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the servers --------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """The yardstick: one async JSON endpoint, uvicorn configured as repligate serve is."""
    from fastapi import FastAPI

    from repligate.serving import uvicorn_config
    from repligate.settings import Settings

    app = FastAPI()

    @app.get("/v1/predictions/{prediction_id}")
    async def read(prediction_id: str) -> dict[str, Any]:
        return {"id": prediction_id, "status": "succeeded"}

    import uvicorn

    # REPLIGATE_ACCESS_LOG (inherited) applies here as it does to repligate serve.
    config = uvicorn_config(app, host="127.0.0.1", port=port, access_log=Settings().access_log)
    uvicorn.Server(config).run()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    token: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server at {url} exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer from {url} within 120 s")


def start_bare(log: Path) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, process, "/v1/predictions/x")
    return Server(process, url)


def start_repligate(data: Path, weights: Path, log: Path) -> Server:
    """``repligate serve`` on a fresh data dir; it makes a key and prints its token."""
    port = free_port()
    env = {
        **os.environ,
        "REPLIGATE_DATA_DIR": str(data),
        "REPLIGATE_WEIGHTS_DIR": str(weights),
        "REPLIGATE_PORT": str(port),
        "REPLIGATE_HOST": "127.0.0.1",
        "REPLIGATE_SAFETY_CHECKER": "false",
        # Counted (their cost is part of what is measured) but never reached.
        "REPLIGATE_CREATE_RATE_LIMIT": "1000000000/minute",
        "REPLIGATE_READ_RATE_LIMIT": "1000000000/minute",
        "HF_HUB_OFFLINE": "1",
    }
    out = data.parent / f"{data.name}.stdout"
    process = subprocess.Popen(
        [sys.executable, "-m", "repligate.cli", "serve"],
        env=env,
        stdout=out.open("wb"),
        stderr=log.open("ab"),
    )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, process, "/health")
    tokens = [line for line in out.read_text().splitlines() if line.startswith("r8_")]
    if not tokens:
        raise SystemExit("repligate serve printed no token")
    return Server(process, url, tokens[-1])


# -- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_rate(load: Load, seconds: float, tmp: Path) -> tuple[float, int, int]:
    """Requests per second, non-2xx answers and requests made, from wrk."""
    script = tmp / "request.lua"
    lines = [f"wrk.method = {json.dumps(load.method)}"]
    if load.body is not None:
        lines.append(f"wrk.body = {json.dumps(load.body.decode())}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in load.headers.items()]
    script.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(script),
            load.url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    count = re.search(r"(\d+) requests in", result.stdout)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    if rate is None or count is None:
        raise SystemExit(f"wrk printed no rate:\n{result.stdout}\n{result.stderr}")
    errors = re.search(r"Socket errors:.*", result.stdout)
    failures = int(bad.group(1)) if bad else 0
    if errors:
        failures += sum(int(n) for n in re.findall(r"\d+", errors.group(0)))
    return float(rate.group(1)), failures, int(count.group(1))


async def _httpx_load(load: Load, seconds: float) -> tuple[int, int, float]:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    done = failed = 0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.perf_counter() < deadline:
                response = await client.request(
                    load.method, load.url, headers=load.headers, content=load.body
                )
                if response.status_code >= 300:
                    failed += 1
                done += 1

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return done, failed, time.perf_counter() - started


def httpx_rate(load: Load, seconds: float, tmp: Path) -> tuple[float, int, int]:
    """The fallback: the same load from httpx, in a process of its own."""
    body = load.body.decode() if load.body is not None else None
    spec = tmp / "load.json"
    spec.write_text(json.dumps({**load.__dict__, "body": body, "seconds": seconds}))
    result = subprocess.run(
        [sys.executable, __file__, "--httpx-load", str(spec), "--connections", str(CONNECTIONS)],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    done, failed, elapsed = json.loads(result.stdout.strip().splitlines()[-1])
    return done / elapsed, failed, done


def run_httpx_load(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    body = spec["body"].encode() if spec["body"] is not None else None
    load = Load(spec["method"], spec["url"], spec["headers"], body)
    print(json.dumps(asyncio.run(_httpx_load(load, spec["seconds"]))))


def choose_loader(choice: str) -> tuple[Any, str]:
    """The load function (wrk when installed, unless told) and how the table names it."""
    if choice == "wrk" or (choice == "auto" and shutil.which("wrk")):
        return wrk_rate, f"wrk -t{THREADS} -c{CONNECTIONS}"
    return httpx_rate, f"httpx async client, {CONNECTIONS} connections, in its own process"


# -- the rounds ---------------------------------------------------------------------------

MEASURES = ("bare", "read", "create")
LABELS = {
    "bare": "bare FastAPI async JSON endpoint (GET)",
    "read": "repligate GET /v1/predictions/{id} (key, DB row, full object)",
    "create": "repligate POST /v1/predictions, async (worker busy)",
}


def one_prediction(server: Server) -> str:
    """A finished prediction with an output file, made the way a client makes one; it
    also loads the pipeline, so the worker is warm before anything is timed."""
    headers = {"Authorization": f"Bearer {server.token}", "Prefer": "wait"}
    body = {"version": VERSION, "input": SMALL_INPUT}
    response = httpx.post(f"{server.url}/v1/predictions", json=body, headers=headers, timeout=120)
    answer = response.json()
    if answer.get("status") != "succeeded":
        raise SystemExit(f"the warm-up prediction did not succeed: {answer}")
    return str(answer["id"])


def tiny_weights(given: Path | None, tmp: Path) -> Path:
    """The weights folder given, or tiny random-weight pipelines built under ``tmp``."""
    if given is not None:
        return given
    from repligate.testing.tiny_weights import build_all

    print("building tiny random-weight pipelines ...", flush=True)
    build_all(tmp / "weights")
    return tmp / "weights"


def main(argv: list[str] | None = None) -> int:
    global CONNECTIONS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (<= 30)")
    parser.add_argument("--weights", type=Path, help="tiny weights already built (else built)")
    parser.add_argument("--loader", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--connections", type=int, help="held open (8; 32 with --scaled)")
    parser.add_argument("--scaled", action="store_true", help="bench/scaled.py's one pass")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--httpx-load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    CONNECTIONS = args.connections = args.connections or (32 if args.scaled else CONNECTIONS)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.httpx_load:
        run_httpx_load(args.httpx_load)
        return 0
    if args.scaled:
        import scaled  # bench/ is on the path: this file was run as a script

        return scaled.run(args)
    seconds = min(max(args.seconds, 1.0), 30.0)
    rate, loader = choose_loader(args.loader)

    rates: dict[str, list[float]] = {m: [] for m in MEASURES}
    # Server CPU (user + system, all its threads) per request, in ms: steadier than the
    # rate on a shared machine, since it does not count time lost to other processes.
    cpu: dict[str, list[float]] = {m: [] for m in MEASURES}
    failures: dict[str, int] = dict.fromkeys(MEASURES, 0)
    with tempfile.TemporaryDirectory(prefix="repligate-api-bench-") as tmp_name:
        tmp = Path(tmp_name)
        weights = tiny_weights(args.weights, tmp)
        log = tmp / "servers.log"
        bare = start_bare(log)
        try:
            for index in range(args.rounds):
                # A fresh repligate each round: the predictions the create measurement
                # queued would otherwise keep its worker busy during the next reads.
                server = start_repligate(tmp / f"data-{index}", weights, log)
                try:
                    prediction_id = one_prediction(server)
                    auth = {"Authorization": f"Bearer {server.token}"}
                    create = json.dumps({"version": VERSION, "input": SMALL_INPUT}).encode()
                    loads = {
                        "bare": Load("GET", f"{bare.url}/v1/predictions/{prediction_id}", {}),
                        "read": Load("GET", f"{server.url}/v1/predictions/{prediction_id}", auth),
                        "create": Load(
                            "POST",
                            f"{server.url}/v1/predictions",
                            {**auth, "Content-Type": "application/json"},
                            create,
                        ),
                    }
                    # Reads in both orders around each other; creates last (they leave
                    # the worker busy for the rest of the round).
                    order = ["bare", "read"] if index % 2 == 0 else ["read", "bare"]
                    for measure in [*order, "create"]:
                        pid = (bare if measure == "bare" else server).process.pid
                        before = cpu_seconds(pid)
                        per_second, failed, count = rate(loads[measure], seconds, tmp)
                        after = cpu_seconds(pid)
                        rates[measure].append(per_second)
                        failures[measure] += failed
                        if before is not None and after is not None and count:
                            cpu[measure].append((after - before) * 1000 / count)
                    print(
                        f"round {index + 1}: "
                        + ", ".join(f"{m} {rates[m][-1]:,.0f}/s" for m in MEASURES),
                        flush=True,
                    )
                finally:
                    server.stop()
        finally:
            bare.stop()
    print_table(rates, cpu, failures, loader, seconds)
    return 0


def print_table(
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    failures: dict[str, int],
    loader: str,
    seconds: float,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    rounds = len(rates["bare"])
    table = Table(
        title=f"Requests per second, {rounds} rounds of {seconds:g} s each; load: {loader}"
    )
    table.add_column("endpoint")
    columns = ("median /s", "min", "max", "÷ bare (median of rounds)", "server CPU ms/req")
    for column in (*columns, "non-2xx"):
        table.add_column(column, justify="right")
    for measure in MEASURES:
        values = rates[measure]
        ratios = [v / b for v, b in zip(values, rates["bare"], strict=True)]
        table.add_row(
            LABELS[measure],
            f"{statistics.median(values):,.0f}",
            f"{min(values):,.0f}",
            f"{max(values):,.0f}",
            "" if measure == "bare" else f"{statistics.median(ratios):.2f}",
            f"{statistics.median(cpu[measure]):.2f}" if cpu[measure] else "n/a",
            str(failures[measure]),
        )
    console.print(table)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(
        f"load average at the end {load} on {os.cpu_count()} CPUs (other processes skew "
        "every number; the ratios are taken within a round)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
