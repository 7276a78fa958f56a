"""Webhook delivery: the outbox drained, as Replicate delivers webhooks.

The deliveries themselves are written by the store in the transaction of the change they
tell of (``store/webhooks.py``), so none is lost to a crash. This module sends them:

- in the order of the prediction's changes, the body being the prediction object as
  ``GET`` shows it, as it stood at that change (the outbox row keeps its changing
  fields, so this holds after a restart too);
- ``output`` and ``logs`` at most once per ``throttle_seconds`` per prediction: a newer
  one supersedes those still waiting, and a pending ``completed`` supersedes them all
  (it carries the final output and logs);
- ``start``, ``output`` and ``logs`` are tried once; ``completed`` is retried with
  exponential backoff (1 s, 2 s, 4 s ...) while the next try falls within
  ``retry_seconds`` of the completion, on any answer but 2xx and on network errors;
- signed with Standard Webhooks headers (``webhook-id``, the same across retries;
  ``webhook-timestamp``; ``webhook-signature``) with the owner key's ``whsec_`` secret.

It is a subscriber of the event bus only to learn that something is due; it writes no
status. Several processes may drain one outbox: each
delivery is claimed (a lease) before it is sent.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from repligate.bus import PredictionEvent
from repligate.clock import Clock
from repligate.records import Prediction, WebhookAttempt, WebhookDelivery
from repligate.store import db
from repligate.store import predictions as prediction_store
from repligate.store import webhooks as store
from repligate.webhook_sender import WebhookSender

log = logging.getLogger(__name__)

THROTTLED = ("output", "logs")
# How long the scheduler sleeps when nothing wakes it (another process may have written
# deliveries; a retry may have come due).
_POLL_SECONDS = 1.0

Render = Callable[[Prediction], dict[str, Any]]


class WebhookDeliverer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        sender: WebhookSender,
        render: Render,
        clock: Clock,
        *,
        retry_seconds: float = 60.0,
        throttle_seconds: float = 0.5,
        workers: int = 4,
    ) -> None:
        self._sessions = sessions
        self._sender = sender
        self._render = render
        self._clock = clock
        self.retry_seconds = retry_seconds
        self.throttle_seconds = throttle_seconds
        self._workers = workers
        # A claimed delivery is due again after this (its sender died meanwhile).
        self._lease = timedelta(seconds=sender.timeout * (sender.max_redirects + 1) + 30)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._busy: set[str] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Told (event, outcome) of each try: delivered, failed or retrying (the metrics).
        self.on_attempt: Callable[[str, str], None] | None = None

    # -- the bus ------------------------------------------------------------------------

    def on_event(self, event: PredictionEvent) -> None:
        if store.wants(event.prediction, event.kind.value):
            self._wake.set()

    # -- secrets ------------------------------------------------------------------------

    def secret(self, api_key_id: str) -> str:
        with db.connect(self._sessions) as session:
            return store.secret(session, api_key_id, self._clock.now())

    # -- draining the outbox ------------------------------------------------------------

    def deliver_due(self) -> int:
        """Send every delivery due now, in this thread; returns how many were tried."""
        with db.connect(self._sessions) as session:
            due = store.due_predictions(session, self._clock.now())
        return sum(self._deliver_for(prediction_id) for prediction_id in due)

    def _deliver_for(self, prediction_id: str) -> int:
        with db.connect(self._sessions) as session:
            waiting = store.pending(session, prediction_id)
        now = self._clock.now()
        throttled = [d for d in waiting if d.event in THROTTLED]
        completed = any(d.event == "completed" for d in waiting)
        dropped = throttled if completed else throttled[:-1]
        for delivery in dropped:
            self._finish(delivery, store.SUPERSEDED)
        tried = 0
        for delivery in (d for d in waiting if d not in dropped):
            assert delivery.next_attempt_at is not None
            if delivery.next_attempt_at > now:
                break  # a later event never overtakes an earlier one still waiting
            if delivery.event in THROTTLED:
                with db.connect(self._sessions) as session:
                    last = store.last_sent(session, prediction_id, THROTTLED)
                if last is not None and now < last + timedelta(seconds=self.throttle_seconds):
                    later = last + timedelta(seconds=self.throttle_seconds)
                    with db.connect(self._sessions) as session:
                        store.set_state(
                            session, delivery.id, state=store.PENDING, next_attempt_at=later
                        )
                    break
            with db.connect(self._sessions) as session:
                if not store.claim(session, delivery, now + self._lease):
                    break  # another process has it
            tried += 1
            if not self._attempt(delivery, now):
                break  # the completed delivery waits for its retry
        return tried

    def _attempt(self, delivery: WebhookDelivery, now: datetime) -> bool:
        """Send once and record it; False when the delivery will be retried."""
        with db.connect(self._sessions) as session:
            current = prediction_store.get(session, delivery.prediction_id)
        if current is None:  # the prediction is gone: nothing to tell
            self._finish(delivery, store.FAILED)
            return True
        prediction = store.as_of(current, delivery.snapshot)
        body = json.dumps(self._render(prediction), separators=(",", ":"))
        signed_at = datetime.now(UTC)  # real time: receivers check it against theirs
        signature = Webhook(self.secret(prediction.api_key_id)).sign(delivery.id, signed_at, body)
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": signature,
        }
        result = self._sender.send(delivery.url, body.encode(), headers)
        error = result.error
        if error is None and not result.ok:
            error = f"the receiver answered {result.status_code}"
        state, retry_at = store.DELIVERED, None
        if not result.ok:
            state = store.FAILED
            if delivery.event == "completed" and not result.refused:
                retry_at = now + timedelta(seconds=2.0**delivery.attempts)
                last_try = delivery.created_at + timedelta(seconds=self.retry_seconds)
                if retry_at <= last_try:
                    state = store.PENDING
                else:
                    retry_at = None
        if state == store.FAILED:
            log.warning(
                "webhook %s for %s not delivered: %s", delivery.event, delivery.prediction_id, error
            )
        if self.on_attempt is not None:
            outcome = {store.DELIVERED: "delivered", store.PENDING: "retrying"}.get(state, "failed")
            self.on_attempt(delivery.event, outcome)
        attempt = WebhookAttempt(now, result.url, result.status_code, error, result.seconds)
        with db.connect(self._sessions) as session:
            store.record_attempt(session, delivery, attempt, state=state, next_attempt_at=retry_at)
        return state != store.PENDING

    def _finish(self, delivery: WebhookDelivery, state: str) -> None:
        with db.connect(self._sessions) as session:
            store.set_state(session, delivery.id, state=state)

    # -- the background sender ----------------------------------------------------------

    def start(self) -> None:
        if self._workers == 0 or self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="repligate-webhook")
        self._thread = threading.Thread(
            target=self._schedule, name="repligate-webhooks", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            # What is being sent finishes (within the sender's timeout); the rest stays
            # in the outbox for the next start.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(_POLL_SECONDS)
            self._wake.clear()
            try:
                with db.connect(self._sessions) as session:
                    due = store.due_predictions(session, self._clock.now())
            except Exception:
                log.exception("reading the webhook outbox failed")
                continue
            for prediction_id in due:
                with self._lock:
                    if prediction_id in self._busy:
                        continue
                    self._busy.add(prediction_id)
                assert self._pool is not None
                self._pool.submit(self._run, prediction_id)

    def _run(self, prediction_id: str) -> None:
        try:
            self._deliver_for(prediction_id)
        except Exception:
            log.exception("delivering the webhooks of %s failed", prediction_id)
        finally:
            with self._lock:
                self._busy.discard(prediction_id)
            # A retry or a throttled event may be due soon: look again.
            self._wake.set()
