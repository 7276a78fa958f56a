"""The relay's loop: one asyncio loop in one thread follows every relayed prediction, so
relayed predictions never hold the local workers' threads, and one HTTP session with
per-key rate limits paces every upstream request.

- ``submit`` (a new prediction) and ``adopt`` (after a restart) hand predictions to it.
- Cancels reach it from the event bus: whatever ended a relayed prediction here (a user's
  cancel, a Cancel-After), the upstream prediction is canceled too.
- ``stop`` leaves upstream predictions running: their ids are stored, and the next start
  picks them up again by polling.
- Keys taken out of the pool are checked again periodically.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from repligate import inputs
from repligate.bus import EventKind, PredictionEvent
from repligate.clock import Clock
from repligate.fetch import Fetcher
from repligate.lifecycle import Status
from repligate.records import Prediction
from repligate.registry import Registry
from repligate.relay.keypool import KeyPool, UpstreamKey
from repligate.relay.outputs import OutputCopier
from repligate.relay.routes import RoutePlan
from repligate.relay.tracker import Tracked, Tracker
from repligate.relay.upstream import RetryPolicy, UpstreamClient
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.store import db
from repligate.store import predictions as prediction_store
from repligate.store import relay as relay_store
from repligate.transitions import Transitions

log = logging.getLogger(__name__)

# Blocking work of the relay (database writes, output copies, file inputs) runs here.
_IO_THREADS = 4
# A sync create asks upstream to hold this much less than our own wait, so the upstream
# id is stored before our reply goes out.
_WAIT_MARGIN = 2


class RelayScheduler:
    def __init__(
        self,
        *,
        settings: Settings,
        routes: RoutePlan,
        registry: Registry,
        sessions: sessionmaker[Session],
        transitions: Transitions,
        storage: Storage,
        fetcher: Fetcher,
        clock: Clock,
    ) -> None:
        self.routes = routes
        self._registry = registry
        self._sessions = sessions
        self._fetcher = fetcher
        self._clock = clock
        self._settings = settings
        self.pool = KeyPool(
            settings.upstream_token_list(),
            concurrency=settings.upstream_key_concurrency,
            creates_per_minute=settings.upstream_creates_per_minute,
            requests_per_minute=settings.upstream_requests_per_minute,
            on_change=self._save_key_state,
        )
        self.client = UpstreamClient(
            settings.upstream_url,
            self.pool,
            retry=RetryPolicy(
                settings.upstream_max_retries,
                settings.upstream_backoff_seconds,
                settings.upstream_backoff_cap_seconds,
            ),
            timeout=settings.upstream_timeout_seconds,
        )
        self._io = concurrent.futures.ThreadPoolExecutor(
            _IO_THREADS, thread_name_prefix="repligate-relay-io"
        )
        self._tracker = Tracker(
            client=self.client,
            copier=OutputCopier(settings, storage),
            transitions=transitions,
            io=self._io,
            record_upstream=self._record_upstream,
            webhook_url=self.webhook_url,
            prepare_inputs=self._prepare_inputs,
            poll_min=settings.upstream_poll_min_seconds,
            poll_max=settings.upstream_poll_max_seconds,
            recheck=settings.upstream_key_recheck_seconds,
        )
        self._tracked: dict[str, Tracked] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._settings.public_base_url and self._settings.upstream_webhook_secret:
            # Webhooks bring the news: polls are only the safety net.
            self._tracker.poll_max *= 6
        self._thread = threading.Thread(target=self._run, name="repligate-relay", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.client.start())
        recheck = loop.create_task(self._recheck_keys())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            recheck.cancel()
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.gather(recheck, *self._tasks, return_exceptions=True))
            loop.run_until_complete(self.client.close())
            loop.close()

    def stop(self) -> None:
        """Stop following: predictions in flight stay in flight upstream and are picked
        up by the next start."""
        if self._loop is None or self._thread is None:
            return
        left = len(self._tracked)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._io.shutdown(wait=True)
        self._thread = None
        if left:
            log.info("relay stopped with %d predictions in flight upstream; resumed at start", left)

    def following(self, prediction_id: str) -> bool:
        return prediction_id in self._tracked

    def in_flight(self) -> int:
        return len(self._tracked)

    # -- what the service calls --------------------------------------------------------

    def handles(self, spec: Any) -> bool:
        return self.routes.relayed(spec)

    def unavailable(self, spec: Any) -> str | None:
        if not self.pool:
            return (
                f"{spec.ref} is routed to Replicate, and this server has no upstream key: "
                "set REPLIGATE_UPSTREAM_TOKENS."
            )
        return None

    def submit(self, prediction: Prediction, wait: float | None = None) -> None:
        """Relay a new prediction. Its relay row is written first, so a restart finds it
        whatever happens next."""
        with db.connect(self._sessions) as session:
            relay_store.add_relayed(session, prediction.id, self._clock.now())
        upstream_wait = int(wait) - _WAIT_MARGIN if wait is not None else None
        tracked = Tracked(
            prediction_id=prediction.id,
            version=prediction.version,
            status=prediction.status,
            inputs=prediction.input,
            wait=upstream_wait if upstream_wait and upstream_wait > 0 else None,
            created=concurrent.futures.Future(),
        )
        self._follow(tracked)

    def created_upstream(self, prediction_id: str) -> concurrent.futures.Future[None] | None:
        """Done once the upstream create of a just-submitted prediction was answered."""
        tracked = self._tracked.get(prediction_id)
        return tracked.created if tracked is not None else None

    def adopt(self, unfinished: Sequence[Prediction]) -> list[Prediction]:
        """After a restart: follow again the relayed predictions still in flight (by their
        upstream id; never created twice); relay again those never sent. Returns the
        predictions that are not the relay's."""
        with db.connect(self._sessions) as session:
            rows = relay_store.relayed(session, [p.id for p in unfinished])
        left: list[Prediction] = []
        resumed = 0
        for prediction in unfinished:
            row = rows.get(prediction.id)
            if row is not None and row.upstream_id is not None:
                key = self.pool.by_fingerprint(row.key_fingerprint) or self.pool.pick()[0]
                self._follow(Tracked.resumed(prediction, row.upstream_id, key))
                resumed += 1
            elif row is not None or (
                prediction.status is Status.STARTING
                and self.handles(self._registry.resolve(prediction.version))
            ):
                # Never answered upstream (or never sent): sent again with the same
                # idempotency key, so an upstream that saw it makes no second one.
                self._follow(
                    Tracked(
                        prediction_id=prediction.id,
                        version=prediction.version,
                        status=prediction.status,
                        inputs=prediction.input,
                    )
                )
                resumed += 1
            else:
                left.append(prediction)
        if resumed:
            log.warning("recovery: %d relayed predictions followed again upstream", resumed)
        return left

    def _follow(self, tracked: Tracked) -> None:
        assert self._loop is not None, "start() the relay first"
        self._tracked[tracked.prediction_id] = tracked
        self._loop.call_soon_threadsafe(self._spawn, tracked)

    def _spawn(self, tracked: Tracked) -> None:
        task = asyncio.get_running_loop().create_task(self._tracker.run(tracked))
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._tracked.pop(tracked.prediction_id, None)

        task.add_done_callback(finished)

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: PredictionEvent) -> None:
        """A bus subscriber: a relayed prediction that ended here, not by the relay
        itself, is canceled upstream."""
        if event.kind is not EventKind.COMPLETED:
            return
        tracked = self._tracked.get(event.prediction.id)
        if tracked is None or tracked.done or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._request_cancel, tracked)

    def _request_cancel(self, tracked: Tracked) -> None:
        tracked.cancel_requested = True
        tracked.wake()

    def deliver(self, prediction_id: str, body: dict[str, Any]) -> bool:
        """An upstream webhook (already verified): the newest view of a prediction, if it
        is the upstream prediction of ``prediction_id`` and still followed."""
        tracked = self._tracked.get(prediction_id)
        if self._loop is None or tracked is None or tracked.upstream_id != body.get("id"):
            return False
        self._loop.call_soon_threadsafe(self._push, tracked, body)
        return True

    def webhook_url(self, prediction_id: str) -> str | None:
        """Where upstream sends this prediction's webhooks (with a public base URL and
        the upstream webhook secret set), else None: polls only."""
        base = self._settings.public_base_url
        if not base or self._settings.upstream_webhook_secret is None:
            return None
        return f"{base.rstrip('/')}/relay/webhooks/{prediction_id}"

    def _push(self, tracked: Tracked, body: dict[str, Any]) -> None:
        tracked.pushed = body
        tracked.wake()

    # -- blocking helpers (run on the relay's I/O threads) -------------------------------

    def _record_upstream(self, prediction_id: str, upstream_id: str, fingerprint: str) -> None:
        with db.connect(self._sessions) as session:
            relay_store.set_upstream(session, prediction_id, upstream_id, fingerprint)

    def _prepare_inputs(self, tracked: Tracked) -> dict[str, Any]:
        """The input upstream gets: file inputs fetched here, with this server's rules
        (as on a local run), and sent as data URIs, since upstream cannot read this
        server's own file URLs."""
        spec = self._registry.resolve(tracked.version)
        raw = dict(tracked.inputs or {})
        with db.connect(self._sessions) as session:
            found = prediction_store.get(session, tracked.prediction_id)
        owner = found.api_key_id if found is not None else None
        properties = spec.schemas["Input"]["properties"]
        for name, value in inputs.validate(spec, raw).items():
            if name not in raw:
                continue
            if properties.get(name, {}).get("format") == "uri" and isinstance(value, str) and value:
                if value.lower().startswith("data:"):
                    continue
                fetched = self._fetcher.fetch(value, field=name, owner=owner)
                encoded = base64.b64encode(fetched.data).decode()
                raw[name] = f"data:{fetched.content_type};base64,{encoded}"
        return raw

    def _save_key_state(self, key: UpstreamKey) -> None:
        with db.connect(self._sessions) as session:
            relay_store.save_key_state(
                session, key.fingerprint, key.state, key.reason, self._clock.now()
            )

    async def _recheck_keys(self) -> None:
        """Keys taken out come back by themselves once they are valid again."""
        for key in self.pool.keys:  # the table shows every key of the pool as it starts
            await asyncio.get_running_loop().run_in_executor(self._io, self._save_key_state, key)
        while True:
            await asyncio.sleep(self._settings.upstream_key_recheck_seconds)
            for key in self.pool.keys:
                if key.usable:
                    continue
                valid = await self.client.check(key)
                if valid:
                    self.pool.bring_back(key)
