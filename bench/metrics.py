"""What structured progress and metrics cost: prints a table, never passes or fails.

    python bench/metrics.py                 # 300 predictions, 2000 flushes, 200 scrapes
    python bench/metrics.py --predictions 1000

An app wired with the fakes (scripted provider, inline queue, SQLite in a temp dir). It
times, interleaved round by round so drift cancels:
- a log flush through the transition point with and without a progress value (the same
  UPDATE, one JSON column more);
- the metrics subscriber's work for one ``completed`` event, beside the bus publish of
  the same event to every subscriber;
- ``GET /metrics`` through HTTP with the finished predictions in the database, beside
  ``GET /health`` (the cheapest route) as the floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from repligate.app import build_container, create_app
from repligate.bus import EventKind, PredictionEvent
from repligate.clock import SystemClock
from repligate.events import Progress
from repligate.records import RunProgress
from repligate.settings import Settings
from repligate.store import keys
from repligate.testing.fakes import Gate, ManualQueue, ScriptedProvider
from repligate.transitions import Transitions


def _median_us(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--predictions", type=int, default=300)
    parser.add_argument("--flushes", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), log_flush_interval=0.0, webhook_workers=0)
        gate = Gate()
        provider = ScriptedProvider(script=[Progress(1, 2), Progress(2, 2)], returns="x")
        container = build_container(
            settings, provider=provider, queue=ManualQueue.factory(inline=True)
        )
        assert container.metrics is not None
        with TestClient(create_app(settings, container)) as client:
            with container.sessions() as session:
                _, token = keys.create(session, name="bench")
            auth = {"Authorization": f"Bearer {token}"}
            url = "/v1/models/stability-ai/stable-diffusion/predictions"
            for _ in range(args.predictions):
                client.post(url, json={"input": {"prompt": "a fox"}}, headers=auth)
            # One prediction held running, to flush logs into.
            provider.script = [gate]
            assert isinstance(container.queue, ManualQueue)
            container.queue.inline = False
            running = client.post(url, json={"input": {"prompt": "held"}}, headers=auth).json()
            transitions = Transitions(container.sessions, container.bus, SystemClock())
            assert transitions.start(running["id"]) is not None
            progress = RunProgress(1, 50)
            done = container.service.peek(running["id"])
            metrics = container.metrics
            event = PredictionEvent(EventKind.COMPLETED, done)
            rows: dict[int, list[float]] = {k: [] for k in range(5)}
            for _ in range(10):  # rounds, interleaved
                n = args.flushes // 10
                rows[0].append(_median_us(lambda: transitions.append_logs(running["id"], "x\n"), n))
                rows[1].append(
                    _median_us(lambda: transitions.append_logs(running["id"], "x\n", progress), n)
                )
                rows[2].append(_median_us(lambda: metrics.on_event(event), n))
                s = args.scrapes // 10
                rows[3].append(_median_us(lambda: client.get("/health"), s))
                rows[4].append(_median_us(lambda: client.get("/metrics"), s))
            gate.open()
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"{args.predictions} finished predictions in SQLite; medians of 10 rounds\n")
    print(f"{'what':52} {'µs':>10} {'ratio':>8}")
    print(f"{'log flush (append_logs), no progress':52} {med[0]:10.0f} {1.0:8.2f}")
    print(f"{'log flush with progress (same UPDATE)':52} {med[1]:10.0f} {med[1] / med[0]:8.2f}")
    print(f"{'metrics subscriber, one completed event':52} {med[2]:10.1f} {med[2] / med[0]:8.3f}")
    print(f"{'GET /health (floor)':52} {med[3]:10.0f} {1.0:8.2f}")
    print(f"{'GET /metrics':52} {med[4]:10.0f} {med[4] / med[3]:8.2f}")
    print("\nratios: flushes against the flush without progress; the subscriber against")
    print("a flush; /metrics against /health.")


if __name__ == "__main__":
    main()
