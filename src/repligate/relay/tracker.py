"""One relayed prediction, from its upstream create to its end, on the relay's loop.

Every change reaches the prediction through the transition point (``transitions.py``):
upstream's status, its new log lines, each new item of an iterator output (copied here
first), and at the end its output, error and ``predict_time``. A write that does not
apply means the prediction ended here meanwhile (a cancel, a Cancel-After, another
process): the upstream prediction is then canceled too.

Polls back off while nothing changes upstream; a webhook or a cancel wakes the poll
early. There is no deadline: a prediction is followed until it ends upstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress
from repligate.relay.keypool import UpstreamKey
from repligate.relay.outputs import OutputCopier, OutputCopyFailed
from repligate.relay.progress import upstream_progress
from repligate.relay.upstream import (
    NoUsableKey,
    UpstreamClient,
    UpstreamError,
)
from repligate.transitions import Transitions

log = logging.getLogger(__name__)

T = TypeVar("T")
_TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass(eq=False, slots=True)
class Tracked:
    """What the relay holds for one prediction in flight (kept small: 1,000 at once)."""

    prediction_id: str
    version: str
    status: Status
    inputs: dict[str, Any] | None = None  # None once created upstream
    upstream_id: str | None = None
    key: UpstreamKey | None = None
    wait: int | None = None
    logs_seen: int = 0
    outputs: list[Any] = field(default_factory=list)  # iterator items copied so far
    done: bool = False
    cancel_requested: bool = False
    pushed: dict[str, Any] | None = None  # the newest webhook body, if any
    created: concurrent.futures.Future[None] | None = None
    # Set while the poll waits: resolving it (a webhook, a cancel) ends the wait early.
    waker: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waker is not None and not self.waker.done():
            self.waker.set_result(None)

    @classmethod
    def resumed(cls, prediction: Prediction, upstream_id: str, key: UpstreamKey | None) -> Tracked:
        """A prediction relayed before a restart: what it already shows is not redone."""
        outputs = list(prediction.output) if isinstance(prediction.output, list) else []
        return cls(
            prediction_id=prediction.id,
            version=prediction.version,
            status=prediction.status,
            upstream_id=upstream_id,
            key=key,
            logs_seen=len(prediction.logs),
            outputs=outputs,
        )


class Tracker:
    def __init__(
        self,
        *,
        client: UpstreamClient,
        copier: OutputCopier,
        transitions: Transitions,
        io: concurrent.futures.Executor,
        record_upstream: Callable[[str, str, str], None],
        prepare_inputs: Callable[[Tracked], dict[str, Any]],
        webhook_url: Callable[[str], str | None],
        poll_min: float,
        poll_max: float,
        recheck: float,
    ) -> None:
        self._client = client
        self._copier = copier
        self._transitions = transitions
        self._io_pool = io
        self._record_upstream = record_upstream
        self._prepare_inputs = prepare_inputs
        self._webhook_url = webhook_url
        self.poll_min = poll_min
        self.poll_max = poll_max
        self._recheck = recheck

    async def _io(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Blocking work (database writes, file copies) off the loop, on a small pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_pool, lambda: call(*args, **kwargs))

    async def run(self, t: Tracked) -> None:
        try:
            if t.upstream_id is None and not await self._create(t):
                return
            await self._follow(t)
        except asyncio.CancelledError:
            raise  # the relay stops: the prediction is resumed after the restart
        except (UpstreamError, OutputCopyFailed) as exc:
            await self._give_up(t, str(exc))
        except Exception as exc:
            log.exception("relaying %s failed", t.prediction_id)
            await self._give_up(t, f"The relay to Replicate failed: {type(exc).__name__}")
        finally:
            _settle(t)

    async def _create(self, t: Tracked) -> bool:
        if t.cancel_requested:
            return False
        try:
            inputs = await self._io(self._prepare_inputs, t)
        except Exception as exc:  # a file input refused, as on a local run
            await self._end(t, Status.FAILED, error=str(exc) or type(exc).__name__)
            return False
        key, reply = await self._client.create(
            t.version,
            inputs,
            idempotency_key=t.prediction_id,
            wait=t.wait,
            webhook=self._webhook_url(t.prediction_id),
        )
        upstream_id = str(reply.get("id") or "")
        if not upstream_id:
            raise UpstreamError("Replicate (upstream) answered a create without an id.")
        await self._io(self._record_upstream, t.prediction_id, upstream_id, key.fingerprint)
        t.upstream_id, t.key, t.inputs = upstream_id, key, None
        _settle(t)
        if t.cancel_requested:
            await self._cancel_upstream(t)
            return False
        await self._apply(t, reply)
        return not t.done

    async def _follow(self, t: Tracked) -> None:
        interval = self.poll_min
        while not t.done:
            if t.cancel_requested:
                await self._cancel_upstream(t)
                return
            if t.pushed is None:
                await _nap(t, interval)
            if t.cancel_requested:
                continue
            reply, t.pushed = t.pushed, None
            if reply is None:
                try:
                    assert t.key is not None and t.upstream_id is not None
                    reply = await self._client.get(t.key, t.upstream_id)
                except NoUsableKey:
                    # Its key is out of the pool: wait for the check that brings it back.
                    interval = self._recheck
                    continue
            changed = await self._apply(t, reply)
            interval = self.poll_min if changed else min(interval * 1.5, self.poll_max)

    async def _apply(self, t: Tracked, reply: dict[str, Any]) -> bool:
        """Fold one upstream view of the prediction into ours; whether anything changed."""
        status = str(reply.get("status") or "")
        changed = False
        if status in ("processing", *_TERMINAL) and t.status is Status.STARTING:
            if await self._io(self._transitions.start, t.prediction_id) is None:
                return await self._moved_on(t)
            t.status, changed = Status.PROCESSING, True
        logs = reply.get("logs") or ""
        new_logs = logs[t.logs_seen :] if isinstance(logs, str) else ""
        progress = upstream_progress(reply)
        output = reply.get("output")
        if isinstance(output, list) and len(output) > len(t.outputs) and status != "failed":
            # An iterator output: each new item is copied and shown as it comes.
            if new_logs and status not in _TERMINAL:
                appended = await self._io(
                    self._transitions.append_logs, t.prediction_id, new_logs, progress
                )
                if appended is None:
                    return await self._moved_on(t)
                t.logs_seen, new_logs = len(logs), ""
            for index in range(len(t.outputs), len(output)):
                item = await self._io(self._copier.copy, t.prediction_id, output[index], index)
                if status not in _TERMINAL:
                    shown = [*t.outputs, item]
                    if await self._io(self._transitions.set_output, t.prediction_id, shown) is None:
                        return await self._moved_on(t)
                t.outputs.append(item)
            changed = True
        if status not in _TERMINAL:
            if new_logs:
                appended = await self._io(
                    self._transitions.append_logs, t.prediction_id, new_logs, progress
                )
                if appended is None:
                    return await self._moved_on(t)
                t.logs_seen, changed = len(logs), True
            return changed
        if status == "succeeded":
            if isinstance(output, list):
                final = list(t.outputs)
            else:
                final = await self._io(self._copier.copy, t.prediction_id, output)
            metrics = reply.get("metrics") or {}
            predict_time = metrics.get("predict_time") if isinstance(metrics, dict) else None
            await self._end(
                t,
                Status.SUCCEEDED,
                output=final,
                append_logs=new_logs or None,
                predict_time=float(predict_time) if isinstance(predict_time, int | float) else None,
                progress=progress,
            )
        elif status == "failed":
            error = reply.get("error")
            await self._end(
                t,
                Status.FAILED,
                error=str(error) if error else "The prediction failed upstream.",
                append_logs=new_logs or None,
                keep=True,
            )
        else:
            await self._end(t, Status.CANCELED, append_logs=new_logs or None, keep=True)
        return True

    async def _end(
        self,
        t: Tracked,
        status: Status,
        *,
        output: Any = None,
        error: str | None = None,
        append_logs: str | None = None,
        predict_time: float | None = None,
        keep: bool = False,
        progress: RunProgress | None = None,
    ) -> None:
        t.done = True  # before the write: its own completed event is not a cancel
        if t.status is Status.STARTING and status is Status.SUCCEEDED:
            await self._io(self._transitions.start, t.prediction_id)
        shown_output = (t.outputs or None) if keep else output
        await self._io(
            self._transitions.finish,
            t.prediction_id,
            status,
            output=shown_output,
            error=error,
            append_logs=append_logs,
            predict_time=predict_time,
            progress=progress,
        )
        t.status = status

    async def _moved_on(self, t: Tracked) -> bool:
        """Our prediction ended here while upstream's runs on: stop upstream too."""
        t.done = True
        await self._cancel_upstream(t)
        return True

    async def _give_up(self, t: Tracked, message: str) -> None:
        log.warning("relayed prediction %s failed: %s", t.prediction_id, message)
        if not t.done:
            await self._end(t, Status.FAILED, error=message, keep=True)
        await self._cancel_upstream(t)

    async def _cancel_upstream(self, t: Tracked) -> None:
        t.done = True
        if t.upstream_id is None or t.key is None:
            return
        try:
            await self._client.cancel(t.key, t.upstream_id)
            log.info("canceled upstream prediction of %s", t.prediction_id)
        except UpstreamError as exc:
            log.warning("canceling %s upstream failed: %s", t.prediction_id, exc)


async def _nap(t: Tracked, seconds: float) -> None:
    """Sleep up to ``seconds``, or until woken. A bare future and a timer: no task per
    wait (asyncio.wait_for on Event.wait makes one), with 1,000 predictions polling."""
    loop = asyncio.get_running_loop()
    t.waker = loop.create_future()
    timer = loop.call_later(seconds, t.wake)
    try:
        await t.waker
    finally:
        timer.cancel()
        t.waker = None


def _settle(t: Tracked) -> None:
    if t.created is not None and not t.created.done():
        t.created.set_result(None)
