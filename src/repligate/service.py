"""The use cases, named as Replicate's API names them: create, get, list, cancel, plus
wait (for ``Prefer: wait``) and recover (after a crash). No HTTP and no SQL here."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from repligate import cursors, inputs
from repligate.clock import Clock
from repligate.deadlines import DeadlineWatcher
from repligate.errors import (
    AuthenticationError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    QueueUnavailable,
)
from repligate.file_inputs import FileInputs
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.notify import CompletionNotifier
from repligate.providers.base import Provider
from repligate.queue.base import Queue
from repligate.records import ApiKey, Prediction
from repligate.registry import Registry
from repligate.store import db
from repligate.store import keys as key_store
from repligate.store import predictions as store
from repligate.store import relay as relay_store
from repligate.transitions import Transitions

if TYPE_CHECKING:
    from repligate.relay.scheduler import RelayScheduler

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Set while a read runs inline on the event loop (``PredictionService.read``).
_INLINE = contextvars.ContextVar("repligate_inline_read", default=False)

# How often a waiting request re-reads the row even without a wake-up (another process
# may have finished it).
_WAIT_POLL_SECONDS = 1.0


def new_prediction_id() -> str:
    """26 lowercase base32 characters (128 random bits), like Replicate's ids."""
    return base64.b32encode(os.urandom(16)).decode().lower()[:26]


@dataclass(frozen=True)
class Page:
    results: list[Prediction]
    next_cursor: str | None
    previous_cursor: str | None


def _cursor(direction: str, prediction: Prediction) -> str:
    return cursors.encode(prediction.created_at, prediction.id, direction)


class PredictionService:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        registry: Registry,
        provider: Provider,
        queue: Queue,
        transitions: Transitions,
        notifier: CompletionNotifier,
        clock: Clock,
        page_size: int = 100,
        file_inputs: FileInputs | None = None,
        webhook_refusal: Callable[[str], str | None] | None = None,
        deadlines: DeadlineWatcher | None = None,
        relay: RelayScheduler | None = None,
        upstream_create_wait: float = 10.0,
        wait_poll_seconds: float | None = _WAIT_POLL_SECONDS,
    ) -> None:
        self._sessions = sessions
        self.registry = registry
        self._provider = provider
        self._queue = queue
        self._transitions = transitions
        self._notifier = notifier
        self._clock = clock
        self._page_size = page_size
        self._file_inputs = file_inputs
        # Why a webhook URL is refused at create time (webhook_sender.WebhookSender.refusal).
        self._webhook_refusal = webhook_refusal
        self._deadlines = deadlines
        self._stop_hooks: list[Callable[[], None]] = []
        self._stopping = False
        self._relay = relay
        self._upstream_create_wait = upstream_create_wait
        # How often a `Prefer: wait` reads the row again, for a finish in another process
        # that no event told of. None: never in between (a cross-process bus tells it).
        self._wait_poll_seconds = wait_poll_seconds
        self._reads_inline = db.reads_inline(sessions)
        self._kept = db.KeptConnection(sessions)

    async def read(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a short read (``get``, ``get_for_token``, ``authenticate``) from the event
        loop: inline, on a kept connection, where the store says that is cheaper
        (``db.reads_inline``); else in a thread."""
        if not self._reads_inline:
            return await asyncio.to_thread(call, *args, **kwargs)
        token = _INLINE.set(True)
        try:
            return call(*args, **kwargs)
        finally:
            _INLINE.reset(token)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[db.Db]:
        with self._kept() if _INLINE.get() else db.connect(self._sessions) as connection:
            yield connection

    def close(self) -> None:
        """Close the connection kept for inline reads (the app is stopping)."""
        self._kept.close()

    def authenticate(self, token: str | None) -> ApiKey:
        if not token:
            raise AuthenticationError("You did not pass an authentication token")
        with self._connect() as session:
            key = key_store.find_active(session, token)
        if key is None:
            raise AuthenticationError("You did not pass a valid authentication token")
        return key

    def create(
        self,
        key: ApiKey,
        spec: ModelSpec,
        raw_input: Any,
        *,
        webhook: str | None = None,
        webhook_events_filter: Sequence[str] | None = None,
        api_base_url: str | None = None,
        cancel_after: float | None = None,
        base_url: str | None = None,
        api_prefix: str = "",
        wait_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> Prediction:
        """``cancel_after``: seconds from now after which it is canceled (Cancel-After).
        ``base_url`` and ``api_prefix``: where the caller reached the server (its webhook
        bodies carry the URLs the caller's GET would show)."""
        # Refused here with every bad field, relayed or not (upstream is never charged for
        # a bad request); the worker validates again to fill defaults.
        inputs.validate(spec, raw_input)
        if webhook is not None and self._webhook_refusal is not None:
            refusal = self._webhook_refusal(webhook)
            if refusal is not None:
                raise InvalidRequest(f"The webhook URL is refused: {refusal}.")
        relayed = self._relay is not None and self._relay.handles(spec)
        if relayed:
            assert self._relay is not None
            reason = self._relay.unavailable(spec)
        else:
            reason = self._provider.unavailable(spec)
        if reason is not None:
            raise ModelUnavailable(reason)
        prediction_id = new_prediction_id()
        if idempotency_key is not None:
            prediction_id, earlier = self._idempotent(key, idempotency_key, prediction_id)
            if earlier is not None:
                return earlier
        if self._file_inputs is not None:  # large data URIs become files; uploads checked
            raw_input = self._file_inputs.prepare(key, spec, raw_input, api_base_url=api_base_url)
        created_at = self._clock.now()
        deadline = created_at + timedelta(seconds=cancel_after) if cancel_after else None
        prediction = Prediction.starting(
            id=prediction_id,
            api_key_id=key.id,
            model=spec.ref,
            version=spec.version,
            input=raw_input,
            created_at=created_at,
            webhook=webhook,
            webhook_events_filter=list(webhook_events_filter)
            if webhook_events_filter is not None
            else None,
            deadline=deadline,
            base_url=base_url,
            api_prefix=api_prefix,
        )
        with self._connect() as session:
            store.insert(session, prediction)
        if deadline is not None and self._deadlines is not None:
            self._deadlines.watch(prediction.id, deadline)
        if relayed:
            assert self._relay is not None
            self._relay.submit(prediction, wait_seconds)
        else:
            try:
                self._queue.submit(prediction.id, prediction.model)
            except QueueUnavailable as refused:
                # Not left `starting` with no message anywhere: it ends, saying why.
                self._transitions.fail(prediction.id, str(refused))
                raise
        return prediction

    def _idempotent(
        self, key: ApiKey, idempotency_key: str, new_id: str
    ) -> tuple[str, Prediction | None]:
        """The id this create uses, and the prediction an earlier create with the same
        ``Idempotency-Key`` made (None: this create makes it)."""
        if not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.")
        with self._connect() as session:
            prediction_id = relay_store.claim_idempotent(session, key.id, idempotency_key, new_id)
            earlier = store.get(session, prediction_id) if prediction_id != new_id else None
        return prediction_id, earlier

    async def upstream_created(self, key: ApiKey, prediction: Prediction) -> Prediction:
        """For a relayed prediction: wait (a while) until upstream answered its create, so
        the upstream id is stored before the create returns; the newest state."""
        if self._relay is None:
            return prediction
        created = self._relay.created_upstream(prediction.id)
        if created is None:
            return prediction
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(created), self._upstream_create_wait)
        return await self.read(self.get, key, prediction.id)

    def get(self, key: ApiKey, prediction_id: str) -> Prediction:
        with self._connect() as session:
            prediction = store.get(session, prediction_id)
        # Someone else's prediction is as unknown as a missing one.
        if prediction is None or prediction.api_key_id != key.id:
            raise NotFound()
        return prediction

    def get_for_token(self, token: str | None, prediction_id: str) -> Prediction:
        """``get`` for a bearer token. The key check and the read are one query; only
        when it finds nothing is the token checked alone, to answer 401 or 404."""
        if token:
            with self._connect() as session:
                found = store.get_for_token(session, prediction_id, key_store.hash_token(token))
            if found is not None:
                return found
        return self.get(self.authenticate(token), prediction_id)

    def peek(self, prediction_id: str) -> Prediction:
        """A prediction by id alone, for the capability pages (web page by unguessable id)."""
        with self._connect() as session:
            prediction = store.get(session, prediction_id)
        if prediction is None:
            raise NotFound()
        return prediction

    def list(
        self,
        key: ApiKey,
        *,
        cursor: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page:
        before = after = None
        if cursor:
            direction, position = cursors.decode(
                cursor, directions=("n", "p"), hint="use the next/previous URLs as given"
            )
            before, after = (position, None) if direction == "n" else (None, position)
        with self._connect() as session:
            rows = store.page(
                session,
                api_key_id=key.id,
                limit=self._page_size + 1,
                before=before,
                after=after,
                created_after=created_after,
                created_before=created_before,
            )
        more = len(rows) > self._page_size
        if after is not None:
            # Paging back: the extra row is the newest one, at the front.
            results = rows[1:] if more else rows
            has_newer, has_older = more, True
        else:
            results = rows[: self._page_size]
            has_newer, has_older = before is not None, more
        return Page(
            results=results,
            next_cursor=_cursor("n", results[-1]) if results and has_older else None,
            previous_cursor=_cursor("p", results[0]) if results and has_newer else None,
        )

    def cancel(self, key: ApiKey, prediction_id: str) -> Prediction:
        prediction = self.get(key, prediction_id)
        if prediction.status.is_terminal:
            return prediction
        canceled = self._transitions.cancel(prediction_id)
        if canceled is None:
            # It ended (or was claimed and ended) between the read and the write.
            return self.get(key, prediction_id)
        # Stop the worker at its next step; its own final write loses the
        # compare-and-set, so `canceled` stays. (A relayed one is canceled upstream by
        # the relay, which hears of it from the event bus.)
        if self._relay is None or not self._relay.following(prediction_id):
            self._queue.cancel(prediction_id)
        return canceled

    async def wait(self, key: ApiKey, prediction: Prediction, seconds: float) -> Prediction:
        """Wait up to ``seconds`` for a terminal status; return the newest state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        event = self._notifier.subscribe(prediction.id)
        try:
            while True:
                if event.prediction is not None:
                    # The completed event carried the prediction as it ended.
                    prediction = event.prediction
                else:
                    # Read after subscribing, so a finish between create and here is not
                    # missed; and at each poll (another process may have finished it).
                    prediction = await self.read(self.get, key, prediction.id)
                remaining = deadline - loop.time()
                if prediction.status.is_terminal or remaining <= 0 or self._stopping:
                    break
                # A timeout scope, not wait_for: on 3.11 wait_for wraps each wait in a new
                # task, and a thousand waiters would make a thousand tasks a second.
                with contextlib.suppress(TimeoutError):
                    poll = self._wait_poll_seconds
                    async with asyncio.timeout(remaining if poll is None else min(remaining, poll)):
                        await event.wait()
                event.clear()
        finally:
            self._notifier.unsubscribe(prediction.id, event)
        return prediction

    def stop_waiting(self) -> None:
        """The server is stopping: every ``Prefer: wait`` request answers now with the
        prediction as it stands (the client then polls), instead of holding the shutdown."""
        self._stopping = True
        self._notifier.notify_all()
        for hook in self._stop_hooks:
            hook()

    def on_stop_waiting(self, hook: Callable[[], None]) -> None:
        """Also call ``hook`` when the server stops (e.g. to end open event streams)."""
        self._stop_hooks.append(hook)

    def run_count(self, spec: ModelSpec) -> int:
        with self._connect() as session:
            return store.count_for_model(session, spec.ref)

    def recover(self) -> tuple[int, int]:
        """At start: queue again what never started (or was handed back at shutdown)
        when the queue kept it only in memory; fail what was cut off while running with
        no lease (rows from before leases: whether it may run again is unknown). A run
        under a lease is the reaper's once the lease runs out (leases.py): another
        process may be running it now. Returns (requeued, failed)."""
        requeued = failed = 0
        with self._connect() as session:
            unfinished = store.unfinished(session)
        if self._deadlines is not None:  # relayed ones too: a deadline cancels upstream
            for prediction in unfinished:
                if prediction.deadline is not None:
                    self._deadlines.watch(prediction.id, prediction.deadline)
        if self._relay is not None:  # the relay follows its own; the rest are local
            unfinished = self._relay.adopt(unfinished)
        for prediction in unfinished:
            if prediction.status is Status.STARTING:
                if not self._queue.durable:
                    self._queue.submit(prediction.id, prediction.model)
                    requeued += 1
            elif prediction.attempts == 0 and self._transitions.fail(
                prediction.id,
                "The server stopped while this prediction was running, so it did not "
                "finish. Run it again.",
            ):
                failed += 1
        if requeued or failed:
            log.warning("recovery: %d predictions queued again, %d failed", requeued, failed)
        return requeued, failed
