"""``python bench/api.py --scaled``: status reads and async creates per second against the
embedded default and the README's scaled-out deployment, in one run; prints a table.

Targets, each measured right after the yardstick (so each ratio compares two numbers taken
under the same background load):

1. the embedded default: one ``repligate serve`` (SQLite, local files, in-process queue,
   whose worker runs the predictions the creates pile up, as it would in production);
2. the scaled-out deployment of README.md's "Scaling out" guide, started with the guide's
   own blocks (``tests/processes.py`` reads and fills them in, as the scale-out tests do):
   ``repligate migrate``, ``repligate keys create``, a ``repligate worker``, then
   ``repligate serve --workers 1`` and later ``--workers 2``; PostgreSQL (a database the
   bench creates and drops), Redis as event bus, rate-limit store and Celery broker, S3 on
   moto's server (local files when moto is not installed);
3. the yardstick: ``bench/api.py``'s bare endpoint, served the same way.

The worker runs the warm-up prediction (the one the reads fetch), then is stopped before
anything is timed: workers run on GPU hosts, not on the API host, and on 2 cores one
running predictions would take the CPU the second API process needs. So the deployment's
creates are accepted-and-queued (a row written, a task on the broker); the tasks left on
the broker are deleted at the end, with the database.

The load holds 32 connections (``--connections``): with ``bench/api.py``'s 8, two API
processes each get 4 and spend their time waiting on PostgreSQL and Redis round trips,
not working, so the rate measured is a latency, not what the processes can serve.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import api
import httpx
from scaled_services import (
    BROKER_URL,
    delete_broker_queues,
    reachable,
    s3_values,
    temporary_database,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "stability-ai/stable-diffusion"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Counted, as in production (in Redis for the deployment), but never reached.
BENCH_ENV = {
    "REPLIGATE_CREATE_RATE_LIMIT": "1000000000/minute",
    "REPLIGATE_READ_RATE_LIMIT": "1000000000/minute",
    "REPLIGATE_SAFETY_CHECKER": "false",
}
OPERATIONS = ("read", "create")
OPERATION_LABELS = {"read": "status read", "create": "async create"}


@dataclass
class Row:
    target: str
    operation: str
    rate: float
    bare: float  # the yardstick measured right before this target
    failures: int
    cpu_ms: float | None  # the API processes' CPU per request
    service_ms: float | None = None  # PostgreSQL's and Redis's (all of their processes)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rate(self, target: str, operation: str) -> float | None:
        found = [r.rate for r in self.rows if r.target == target and r.operation == operation]
        return found[0] if found else None


def group_cpu_seconds(pgid: int) -> dict[int, float]:
    """CPU time of each live process in a process group (a ``serve --workers N``
    supervisor and its API processes), by pid."""
    found: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                ticks = int(fields[11]) + int(fields[12])
                found[int(stat.parent.name)] = ticks / os.sysconf("SC_CLK_TCK")
    return found


def service_cpu_seconds() -> dict[int, float]:
    """CPU time of every PostgreSQL and Redis process on this machine, by pid (whoever
    else uses them is counted too: a rough figure)."""
    found: dict[int, float] = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in ("postgres", "redis-server"):
                seconds = api.cpu_seconds(int(comm.parent.name))
                if seconds is not None:
                    found[int(comm.parent.name)] = seconds
    return found


class Bench:
    """Runs each measurement, the yardstick first for each target."""

    def __init__(self, seconds: float, rate: Callable[..., tuple[float, int, int]], tmp: Path):
        self.seconds, self.rate, self.tmp = seconds, rate, tmp
        self.results = Results()
        self.bare_server: api.Server | None = None

    def measure(
        self, load: api.Load, *cpus: Callable[[], dict[int, float]]
    ) -> tuple[float, int, list[dict[int, float]], int]:
        """Requests per second, failures, the CPU seconds each process of each group in
        ``cpus`` spent meanwhile, and the requests made."""
        before = [cpu() for cpu in cpus]
        per_second, failed, count = self.rate(load, self.seconds, self.tmp)
        after = [cpu() for cpu in cpus]
        spent = [
            {pid: now[pid] - then.get(pid, 0.0) for pid in now}
            for then, now in zip(before, after, strict=True)
        ]
        return per_second, failed, spent, count

    def target(
        self,
        name: str,
        url: str,
        token: str,
        prediction_id: str,
        cpu: Callable[[], dict[int, float]],
        services: bool = False,
    ) -> dict[int, float]:
        """The yardstick, then reads and creates on one target; the CPU each of the
        target's processes spent on the reads (how evenly the load spread)."""
        assert self.bare_server is not None
        bare = self.bare_server
        bare_rate, *_ = self.measure(
            api.Load("GET", f"{bare.url}/v1/predictions/{prediction_id}", {}),
            lambda: {bare.process.pid: api.cpu_seconds(bare.process.pid) or 0.0},
        )
        self.results.bare.append(bare_rate)
        auth = {"Authorization": f"Bearer {token}"}
        body = json.dumps({"input": api.SMALL_INPUT}).encode()
        loads = {
            "read": api.Load("GET", f"{url}/v1/predictions/{prediction_id}", auth),
            "create": api.Load(
                "POST",
                f"{url}/v1/models/{MODEL}/predictions",
                {**auth, "Content-Type": "application/json"},
                body,
            ),
        }
        spread: dict[int, float] = {}
        for operation in OPERATIONS:  # creates last: they leave work queued behind them
            groups = (cpu, service_cpu_seconds) if services else (cpu,)
            rate, failed, spent, count = self.measure(loads[operation], *groups)
            per_request = [sum(g.values()) * 1000 / count if count and g else None for g in spent]
            if operation == "read":
                spread = spent[0]
            row = Row(name, operation, rate, bare_rate, failed, *per_request)
            self.results.rows.append(row)
            print(f"  {name}: {operation} {rate:,.0f}/s (yardstick {bare_rate:,.0f}/s)", flush=True)
        return spread


def warm_prediction(url: str, token: str) -> str:
    """A finished prediction with an output file, made as a client makes one (it also
    loads the pipeline in whichever process runs it): its id."""
    headers = {"Authorization": f"Bearer {token}", "Prefer": "wait"}
    body = {"input": api.SMALL_INPUT}
    answer = httpx.post(
        f"{url}/v1/models/{MODEL}/predictions", json=body, headers=headers, timeout=120
    ).json()
    deadline = time.monotonic() + 300
    while answer.get("status") in ("starting", "processing") and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = httpx.get(
            f"{url}/v1/predictions/{answer['id']}", headers=headers, timeout=30
        ).json()
    if answer.get("status") != "succeeded":
        raise SystemExit(f"the warm-up prediction did not succeed: {answer}")
    return str(answer["id"])


# -- the embedded default -----------------------------------------------------------------


def bench_embedded(bench: Bench, weights: Path) -> None:
    server = api.start_repligate(bench.tmp / "embedded", weights, bench.tmp / "servers.log")
    try:
        prediction_id = warm_prediction(server.url, server.token)
        pid = server.process.pid
        bench.target(
            "embedded (SQLite, 1 process)",
            server.url,
            server.token,
            prediction_id,
            lambda: {pid: api.cpu_seconds(pid) or 0.0},
        )
    finally:
        server.stop()


# -- the scaled-out deployment ------------------------------------------------------------


def bench_deployment(bench: Bench, weights: Path) -> None:
    notes = bench.results.notes
    missing = [
        what for what, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not reachable(port)
    ]
    if missing:
        notes.append(
            f"skipped the PostgreSQL + Celery rows: {' and '.join(missing)} not reachable "
            "on 127.0.0.1 (5432, 6379)"
        )
        return
    sys.path.insert(0, str(ROOT))  # the harness that runs the README's guide blocks
    from tests import processes

    class BenchDeployment(processes.Deployment):
        """The guide's environment, plus the bench's settings (``BENCH_ENV``)."""

        local_files = False

        def environment(self, values: Any, own: Any) -> dict[str, str]:
            env = super().environment(values, own)
            env.update(BENCH_ENV)
            if self.local_files:  # no moto: files stay under each process's data dir
                env = {k: v for k, v in env.items() if not k.startswith("REPLIGATE_S3_")}
                env["REPLIGATE_STORAGE"] = "local"
            return env

    prefix = f"repligate-bench-{uuid.uuid4().hex[:8]}"
    celery = processes.CELERY  # the scale-out tests' setup: the guide's queue block, a worker
    with temporary_database() as database_url, s3_values(notes) as s3:
        values = {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "EVENT_CHANNEL": prefix,
            "BROKER_URL": BROKER_URL,
            "QUEUE_PREFIX": prefix,
            "SECRET_KEY": secrets.token_hex(32),
            "WEIGHTS_DIR": str(weights),
            **(s3 or {"S3_BUCKET": "", "S3_ENDPOINT_URL": ""}),
        }
        deployment = BenchDeployment(values, celery, bench.tmp / "deployment")
        deployment.local_files = s3 is None
        try:
            deployment.run("migrate")
            token = deployment.create_key("bench")
            worker = deployment.start_extra(celery.processes[0])
            one = deployment.start_api(processes=1)
            prediction_id = warm_prediction(one.url, token)
            worker.stop()  # see the module's docstring
            for count, api_process in ((1, one), (2, None)):
                if api_process is None:
                    api_process = deployment.start_api(processes=2)
                pgid = api_process.pid
                spread = bench.target(
                    f"PostgreSQL + Celery, {count} API process{'es' if count > 1 else ''}",
                    api_process.url,
                    token,
                    prediction_id,
                    functools.partial(group_cpu_seconds, pgid),
                    services=True,
                )
                if count > 1:
                    # The two busiest: the group also holds the supervisor and
                    # multiprocessing's resource tracker, idle.
                    shares = sorted(spread.values(), reverse=True)[:2]
                    total = sum(shares) or 1.0
                    notes.append(
                        "CPU of the 2 API processes during the reads: "
                        + " / ".join(f"{100 * s / total:.0f}%" for s in shares)
                        + " (how evenly the shared socket spread the connections)"
                    )
                api_process.stop()
        finally:
            deployment.stop()
            delete_broker_queues(prefix)


# -- the table ----------------------------------------------------------------------------


def print_table(results: Results, loader: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"Requests per second, {seconds:g} s per measurement; load: {loader}")
    for column in ("target", "operation"):
        table.add_column(column)
    columns = ("req/s", "÷ yardstick", "vs 1 API process", "API CPU ms/req", "PG+Redis CPU")
    for column in (*columns, "non-2xx"):
        table.add_column(column, justify="right")
    bare = results.bare
    table.add_row(
        "yardstick: bare FastAPI endpoint",
        "GET (a constant object)",
        f"{statistics.median(bare):,.0f}",
        "1.00",
        *[""] * 4,
    )
    for row in results.rows:
        growth = ""
        if row.target.endswith("2 API processes"):
            single = results.rate(
                row.target.replace("2 API processes", "1 API process"), row.operation
            )
            growth = f"x{row.rate / single:.2f}" if single else ""
        table.add_row(
            row.target,
            OPERATION_LABELS[row.operation],
            f"{row.rate:,.0f}",
            f"{row.rate / row.bare:.2f}",
            growth,
            f"{row.cpu_ms:.2f}" if row.cpu_ms is not None else "n/a",
            f"{row.service_ms:.2f}" if row.service_ms is not None else "",
            str(row.failures),
        )
    console.print(table)
    spread = f"{min(bare):,.0f}-{max(bare):,.0f}/s" if len(bare) > 1 else "once"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    for line in [
        f"The yardstick was measured before each target ({spread}); each ratio divides by "
        "the one measured just before it.",
        f"status read: GET /v1/predictions/{{id}}; async create: POST /v1/models/{MODEL}/"
        "predictions (no Prefer: wait; answered 201, starting).",
        "Reads fetch one finished prediction with an output file. Embedded creates run while "
        "its in-process worker runs what they queue; the deployment's creates are "
        "accepted-and-queued (no worker runs during the timing: on a real deployment "
        "workers are GPU hosts of their own).",
        "CPU ms per request: the API processes' (all of them), and PostgreSQL's + Redis's "
        "(every process of theirs, so others' use of them on this machine counts too).",
        *results.notes,
        f"A noisy machine with {os.cpu_count()} cores (load average now {load}): the load "
        "generator, the API processes, PostgreSQL and Redis share them, so two API "
        "processes cannot double the rate; read the ratios, not the absolute numbers.",
    ]:
        console.print(line)


def run(args: Any) -> int:
    """``bench/api.py --scaled``."""
    import tempfile

    seconds = min(max(args.seconds, 1.0), 30.0)
    api.CONNECTIONS = args.connections  # this module's copy of api, not __main__'s
    rate, loader = api.choose_loader(args.loader)
    with tempfile.TemporaryDirectory(prefix="repligate-scaled-bench-") as tmp_name:
        tmp = Path(tmp_name)
        weights = api.tiny_weights(args.weights, tmp)
        bench = Bench(seconds, rate, tmp)
        bench.bare_server = api.start_bare(tmp / "servers.log")
        # A Ctrl-C stops everything through the finally clauses, as an error does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            print("embedded default ...", flush=True)
            bench_embedded(bench, weights)
            print("PostgreSQL + Celery deployment (the README's guide) ...", flush=True)
            bench_deployment(bench, weights)
        finally:
            bench.bare_server.stop()
    print_table(bench.results, loader, seconds)
    return 0
