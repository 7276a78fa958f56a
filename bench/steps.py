"""Times, one at a time, each step the server adds around a prediction, using the
server's own functions on its own database and storage (for ``overhead.py``).

Nothing here runs inside the serving path: each step is called alone, ``repeats`` times,
while no prediction runs, and its median is reported with how often one prediction does
it (a log flush happens once per flush interval, a progress line once per step).
"""

from __future__ import annotations

import asyncio
import io
import math
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from PIL import Image
from rich.table import Table

from repligate import inputs
from repligate.bus import InProcessBus
from repligate.clock import SystemClock
from repligate.lifecycle import Status
from repligate.notify import CompletionNotifier
from repligate.queue.base import CancelFlags
from repligate.queue.inprocess import InProcessQueue
from repligate.records import Prediction
from repligate.service import PredictionService, new_prediction_id
from repligate.settings import Settings
from repligate.storage import encode
from repligate.store import predictions as store
from repligate.testing.live_server import LiveServer
from repligate.transitions import Transitions

Step = tuple[str, float, float, str]


def steps_table(steps: list[Step], note: str) -> Table:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:,.1f}"

    table = Table(title=f"Each step the server adds, timed alone ({note}); ms")
    for column, justify in (("step", "left"), ("median", "right"), ("× per prediction", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("per prediction", justify="right")
    table.add_column("where", justify="left")
    total = 0.0
    for label, median, count, where in steps:
        per = median * count
        if where not in ("both paths", "part of the GET"):
            total += per
        table.add_row(label, ms(median), f"{count:g}", ms(per), where)
    table.add_row("sum of server-only steps", "", "", ms(total), "")
    return table


def _median_time(repeats: int, call: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class _NoQueue:
    """The wake-up is timed without workers: nothing is ever submitted."""

    def submit(self, prediction_id: str) -> None:
        pass

    def cancel(self, prediction_id: str) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class StepTimer:
    def __init__(
        self, server: LiveServer, token: str, spec: Any, raw_input: dict[str, Any], repeats: int
    ) -> None:
        self.server = server
        self.token = token
        self.spec = spec
        self.raw_input = raw_input
        self.repeats = repeats
        container = server.container
        self.sessions = container.sessions
        self.storage = container.storage
        self.service = container.service
        self.key = container.service.authenticate(token)
        self.run_input = inputs.validate(spec, raw_input)

    def _new_prediction(self) -> Prediction:
        prediction = Prediction.starting(
            id=new_prediction_id(),
            api_key_id=self.key.id,
            model=self.spec.ref,
            version=self.spec.version,
            input=self.raw_input,
            created_at=datetime.now(UTC),
        )
        with self.sessions() as session:
            store.insert(session, prediction)
        return prediction

    def _insert(self) -> str:
        return self._new_prediction().id

    def _claimed(self) -> str:
        prediction_id = self._insert()
        with self.sessions() as session:
            store.move(session, prediction_id, Status.PROCESSING, started_at=datetime.now(UTC))
        return prediction_id

    def _timed_over(self, prepare: Callable[[], str], step: Callable[[str], Any]) -> float:
        """Median of ``step(id)``, each on a fresh row that ``prepare`` made untimed."""
        times = []
        for _ in range(self.repeats):
            prediction_id = prepare()
            started = time.perf_counter()
            step(prediction_id)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def _claim(self, prediction_id: str) -> None:
        # What the worker does first: the compare-and-set to processing, then a read.
        with self.sessions() as session:
            store.move(session, prediction_id, Status.PROCESSING, started_at=datetime.now(UTC))
            store.get(session, prediction_id)

    def _flush(self, prediction_id: str) -> None:
        with self.sessions() as session:
            store.append_logs(session, prediction_id, "  5%|▌         | 1/20 [00:00<00:01]\n")

    def _finish(self, prediction_id: str, output: Any, logs: str) -> None:
        now = datetime.now(UTC)
        with self.sessions() as session:
            store.move(
                session,
                prediction_id,
                Status.SUCCEEDED,
                output=output,
                error=None,
                logs=logs,
                completed_at=now,
                predict_time=1.0,
                total_time=1.0,
            )

    def _handoff(self) -> float:
        """Submit → the worker thread starts the job, on a queue like the server's."""
        started: dict[str, float] = {}
        ran = threading.Event()

        def execute(job: str) -> None:
            started[job] = time.perf_counter()
            ran.set()

        queue = InProcessQueue(execute, CancelFlags())
        queue.start()
        times = []
        try:
            for index in range(self.repeats):
                ran.clear()
                submitted = time.perf_counter()
                queue.submit(str(index))
                ran.wait(5)
                times.append(started[str(index)] - submitted)
        finally:
            queue.stop()
        return statistics.median(times)

    def _wake_up(self) -> float:
        """notify() on a worker thread → the waiting request's ``service.wait`` returns
        (the event loop's wake-up plus its re-read of the row)."""
        notifier = CompletionNotifier()
        container = self.server.container
        bus = InProcessBus()
        bus.subscribe(notifier.on_event)
        transitions = Transitions(self.sessions, bus, SystemClock())
        service = PredictionService(
            sessions=self.sessions,
            registry=container.service.registry,
            provider=container.provider,
            queue=_NoQueue(),
            transitions=transitions,
            notifier=notifier,
            clock=SystemClock(),
        )
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        times = []
        try:
            for _ in range(min(self.repeats, 100)):
                prediction = self._new_prediction()
                returned: list[float] = []

                async def wait(
                    prediction: Prediction = prediction, returned: list[float] = returned
                ) -> None:
                    await service.wait(self.key, prediction, 10.0)
                    returned.append(time.perf_counter())

                future = asyncio.run_coroutine_threadsafe(wait(), loop)
                time.sleep(0.02)  # let it subscribe and read the row once
                notified = time.perf_counter()
                transitions.cancel(prediction.id)  # the write, then the completed event
                future.result(10)
                times.append(returned[0] - notified)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
        return statistics.median(times)

    def _runner_steps(self, image: Image.Image, repeats: int) -> list[Step]:
        """What the model's runner does around the pipeline call (also in runner.run)."""
        from repligate.runners import schedulers

        runner = self.server.container.provider.runner(self.spec)
        base: Any = runner.pipeline()
        name = self.run_input["scheduler"]
        steps: list[Step] = [
            (
                f"fresh {name} scheduler (per prediction)",
                _median_time(repeats, lambda: schedulers.make(name, base.scheduler.config)),
                1,
                "runner",
            )
        ]
        safety = getattr(getattr(runner, "env", None), "safety", None)
        if safety is not None and getattr(safety, "enabled", True):
            steps.append(
                (
                    "safety checker on the output (on by default)",
                    _median_time(max(10, repeats // 10), lambda: safety.flags([image])),
                    1,
                    "runner",
                )
            )
        return steps

    def run(self, sample: dict[str, Any], settings: Settings) -> list[Step]:
        """``sample``: one finished prediction of the case, as the API returned it."""
        steps: list[Step] = []
        repeats = self.repeats
        png_bytes = httpx.get(sample["output"][0]).content
        image = Image.open(io.BytesIO(png_bytes))
        image.load()
        output = [f"storage:predictions/{sample['id']}/out-0.png"]
        logs = sample["logs"]
        predict_time = sample["metrics"]["predict_time"]
        step_count = self.raw_input["num_inference_steps"]
        interval = settings.log_flush_interval
        # One flush per interval while it runs (every emit when the interval is 0).
        flushes = step_count + 2 if interval <= 0 else max(1, math.floor(predict_time / interval))

        steps.append(
            (
                "auth (key lookup)",
                _median_time(repeats, lambda: self.service.authenticate(self.token)),
                1,
                "part of the GET",
            )
        )
        steps.append(
            (
                "input validation",
                _median_time(repeats, lambda: inputs.validate(self.spec, self.raw_input)),
                1,
                "before create",
            )
        )
        steps.append(("DB insert (starting)", _median_time(repeats, self._insert), 1, "create"))
        steps.append(("queue hand-off (submit → worker)", self._handoff(), 1, "create → worker"))
        steps.append(
            (
                "DB claim (→ processing, read)",
                self._timed_over(self._insert, self._claim),
                1,
                "worker",
            )
        )
        steps.append(
            (
                f"DB log flush (every {interval:g} s)",
                self._timed_over(self._claimed, self._flush),
                flushes,
                "worker",
            )
        )
        from tqdm import tqdm

        steps.append(
            (
                "progress line (tqdm.format_meter)",
                _median_time(repeats, lambda: tqdm.format_meter(7, step_count, 1.3)),
                step_count,
                "worker",
            )
        )
        steps.extend(self._runner_steps(image, repeats))
        level = settings.png_compress_level
        steps.append(
            (
                f"PNG encode (level {level})",
                _median_time(max(10, repeats // 10), lambda: encode.png(image, "x.png", level)),
                1,
                "both paths",
            )
        )
        counter = iter(range(10**9))
        steps.append(
            (
                "storage write (local file)",
                _median_time(
                    repeats,
                    lambda: self.storage.put(f"bench/{next(counter)}.png", png_bytes, "image/png"),
                ),
                1,
                "worker",
            )
        )
        steps.append(
            (
                "DB final update (→ succeeded)",
                self._timed_over(self._claimed, lambda pid: self._finish(pid, output, logs)),
                1,
                "after",
            )
        )
        steps.append(("wait wake-up (notify → wait returns)", self._wake_up(), 1, "after"))
        with httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {self.token}"}
        ) as client:
            client.get(f"/replicate/v1/predictions/{sample['id']}")
            steps.append(
                (
                    "HTTP GET of the prediction (HTTP, auth, read, JSON)",
                    _median_time(
                        repeats, lambda: client.get(f"/replicate/v1/predictions/{sample['id']}")
                    ),
                    1,
                    "request + reply",
                )
            )
        return steps
