"""``create_app(settings)``: wires the store, queue, storage, provider and routers.

Nothing runs at import. The database is migrated and the workers start in the lifespan;
predictions a crashed process left behind are recovered then."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import __version__, backends
from repligate.api import (
    account,
    errors,
    files,
    health,
    models,
    openai_images,
    pages,
    playground,
    predictions,
    ready,
    relay_webhooks,
    uploads,
    web,
)
from repligate.api import metrics as metrics_api
from repligate.api import streams as streams_api
from repligate.api import webhooks as webhooks_api
from repligate.api.limits import limit_reads
from repligate.bus import EventBus, local_only
from repligate.clock import Clock
from repligate.deadlines import DeadlineWatcher
from repligate.leases import LeaseKeeper, LostWorkReaper
from repligate.links import WebLinks
from repligate.metrics import Metrics
from repligate.providers.base import Provider
from repligate.queue.base import CancelFlags, Queue
from repligate.ratelimit import KeyLimiter
from repligate.retention import Sweeper
from repligate.runtime import build_core
from repligate.service import PredictionService
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.store import migrate
from repligate.streams import StreamHub
from repligate.uploads import UploadService
from repligate.usage import UsageRecorder
from repligate.webhook_sender import WebhookSender
from repligate.webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from repligate.relay.routes import RoutePlan
    from repligate.relay.scheduler import RelayScheduler

log = logging.getLogger(__name__)

# Builds a queue around the executor's entry point and the cancel flags it checks.
QueueFactory = Callable[[Callable[[str], None], CancelFlags], Queue]


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    provider: Provider
    queue: Queue
    bus: EventBus
    service: PredictionService
    links: WebLinks
    uploads: UploadService
    webhooks: WebhookDeliverer
    streams: StreamHub
    deadlines: DeadlineWatcher
    # Rate limits and quotas, usage records, retention (ratelimit.py, usage.py, retention.py).
    limiter: KeyLimiter | None = None
    usage: UsageRecorder | None = None
    sweeper: Sweeper | None = None
    # Where each model runs, and the relay to Replicate (None when no model is relayed).
    routes: RoutePlan | None = None
    relay: RelayScheduler | None = None
    # Prometheus metrics (metrics.py), served at GET /metrics.
    metrics: Metrics | None = None
    # This process's leases on what it runs, and the reaper of runs whose worker died.
    leases: LeaseKeeper | None = None
    reaper: LostWorkReaper | None = None


def build_container(
    settings: Settings,
    *,
    storage: Storage | None = None,
    provider: Provider | None = None,
    queue: QueueFactory | None = None,
    clock: Clock | None = None,
) -> Container:
    """Wire the server. Each backend can be given (the fakes in ``repligate.testing``);
    otherwise the embedded defaults are built from ``settings``."""
    core = build_core(settings, storage=storage, provider=provider, clock=clock)
    engine, sessions, registry, storage = core.engine, core.sessions, core.registry, core.storage
    clock, provider, bus, metrics = core.clock, core.provider, core.bus, core.metrics
    transitions, fetcher = core.transitions, core.fetcher
    routes, relay = backends.build_relay(
        settings, provider, registry, sessions, transitions, storage, fetcher, clock
    )
    if relay is not None:
        bus.subscribe(relay.on_event)
        relay.client.on_answer = metrics.upstream_answered
    if queue is not None:
        built_queue = queue(core.executor.execute, core.flags)
    else:
        built_queue = backends.queue(settings, core.executor.execute, core.flags)
    bus.subscribe(backends.remote_cancels(built_queue.cancel))
    sender = WebhookSender.from_settings(settings)
    deadlines = DeadlineWatcher(transitions, built_queue, clock)
    service = PredictionService(
        sessions=sessions,
        registry=registry,
        provider=provider,
        queue=built_queue,
        transitions=transitions,
        notifier=core.notifier,
        clock=clock,
        page_size=settings.list_page_size,
        file_inputs=core.file_inputs,
        webhook_refusal=sender.refusal,
        deadlines=deadlines,
        relay=relay,
        upstream_create_wait=settings.upstream_create_wait_seconds,
        # With a cross-process bus, a finish anywhere wakes the waiter: no polling.
        wait_poll_seconds=None if settings.event_bus_url else 1.0,
    )
    links = WebLinks(core.secret, settings.web_link_ttl_seconds)
    webhooks = WebhookDeliverer(
        sessions,
        sender,
        backends.webhook_body(settings, storage, links),
        clock,
        retry_seconds=settings.webhook_retry_seconds,
        workers=settings.webhook_workers,
    )
    bus.subscribe(local_only(webhooks.on_event))
    webhooks.on_attempt = metrics.webhook_tried
    streams = StreamHub()
    bus.subscribe(streams.on_event)
    service.on_stop_waiting(streams.close_all)
    bus.subscribe(deadlines.on_event)
    limiter = KeyLimiter(
        sessions=sessions,
        clock=clock,
        create_default=settings.create_rate_limit,
        read_default=settings.read_rate_limit,
        storage_url=settings.rate_limit_storage_url,
        cache_seconds=settings.key_limits_cache_seconds,
    )
    usage = UsageRecorder(sessions, storage, registry)
    bus.subscribe(local_only(usage.on_event))
    sweeper = Sweeper(
        sessions=sessions,
        transitions=transitions,
        storage=storage,
        uploads=core.uploads,
        usage=usage,
        clock=clock,
        prediction_retention_seconds=settings.prediction_retention_seconds,
        file_record_retention_seconds=settings.file_record_retention_seconds,
    )
    return Container(
        settings,
        engine,
        sessions,
        storage,
        provider,
        built_queue,
        bus,
        service,
        links,
        core.uploads,
        webhooks,
        streams,
        deadlines,
        limiter=limiter,
        usage=usage,
        sweeper=sweeper,
        routes=routes,
        relay=relay,
        metrics=metrics,
        leases=core.leases,
        reaper=LostWorkReaper(
            sessions=sessions,
            transitions=transitions,
            queue=built_queue,
            storage=storage,
            clock=clock,
            max_attempts=settings.max_attempts,
        ),
    )


def create_app(settings: Settings, container: Container | None = None) -> FastAPI:
    container = container or build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if container.settings.migrate_on_start:
            migrate.upgrade(container.engine)
        else:
            migrate.refuse_if_pending(container.engine)
        container.queue.start()
        if container.relay is not None:
            container.relay.start()
        container.service.recover()
        container.webhooks.start()
        container.deadlines.start()
        loops = []
        if container.sweeper is not None:
            loops.append(
                asyncio.create_task(
                    container.sweeper.run_forever(container.settings.sweep_interval_seconds)
                )
            )
        if container.reaper is not None:
            loops.append(
                asyncio.create_task(
                    container.reaper.run_forever(container.settings.lease_seconds / 2)
                )
            )
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            container.deadlines.stop()
            # The workers get their grace period in a thread: the event loop keeps
            # answering (health checks, the last waiting requests) meanwhile.
            await asyncio.to_thread(container.queue.stop)
            if container.leases is not None:
                container.leases.stop()
            # After the workers: their last completions are delivered, or stay in the
            # outbox for the next start.
            if container.relay is not None:
                await asyncio.to_thread(container.relay.stop)
            await asyncio.to_thread(container.webhooks.stop)
            if container.usage is not None:
                await asyncio.to_thread(container.usage.close)
            container.service.close()
            container.bus.close()
            container.engine.dispose()

    app = FastAPI(title="repligate", version=__version__, lifespan=lifespan)
    app.state.container = container
    errors.install(app)
    for prefix in ("/v1", "/replicate/v1"):
        app.include_router(predictions.router, prefix=prefix)
        app.include_router(models.router, prefix=prefix, dependencies=[Depends(limit_reads)])
        app.include_router(uploads.router, prefix=prefix, dependencies=[Depends(limit_reads)])
        app.include_router(account.router, prefix=prefix)
        app.include_router(streams_api.router, prefix=prefix, dependencies=[Depends(limit_reads)])
        app.include_router(webhooks_api.router, prefix=prefix, dependencies=[Depends(limit_reads)])
    app.include_router(files.router)
    app.include_router(web.router)
    app.include_router(pages.router)
    app.include_router(playground.router)
    app.include_router(health.router)
    app.include_router(ready.router)
    app.include_router(metrics_api.router)
    app.include_router(relay_webhooks.router)
    app.include_router(openai_images.router, prefix="/v1")
    return app
