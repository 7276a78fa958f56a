"""``create_app(settings)``: wires the store, queue, storage, provider and routers.

Nothing runs at import. The database is migrated and the workers start in the lifespan;
predictions a crashed process left behind are recovered then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import __version__
from repligate.api import errors, files, health, models, pages, predictions, uploads, web
from repligate.bus import EventBus, InProcessBus
from repligate.clock import Clock, SystemClock
from repligate.execution import Executor
from repligate.fetch import Fetcher
from repligate.file_inputs import FileInputs
from repligate.links import WebLinks, load_secret
from repligate.models import all_models
from repligate.notify import CompletionNotifier
from repligate.providers.base import Provider
from repligate.providers.local import LocalProvider
from repligate.queue.base import CancelFlags, Queue
from repligate.queue.inprocess import InProcessQueue
from repligate.registry import Registry
from repligate.runners.base import RunnerEnv
from repligate.service import PredictionService
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.storage.local import LocalStorage
from repligate.store import db, migrate
from repligate.transitions import Transitions
from repligate.uploads import UploadService

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


def runner_env_factory(settings: Settings, fetcher: Fetcher) -> RunnerEnv:
    from repligate.runners import device
    from repligate.runners.cache import PipelineCache
    from repligate.runners.safety import LazySafetyChecker
    from repligate.runners.threads import ThreadPolicy
    from repligate.runners.weights import WeightsLocator
    from repligate.runners.weights_cache import WeightsCache

    chosen = device.choose(settings.device)
    return RunnerEnv(
        device=chosen,
        weights=WeightsLocator(settings.weights_dir),
        pipelines=PipelineCache(
            settings.pipeline_cache_bytes or device.memory_budget(chosen),
            release=lambda: device.release_memory(chosen),
        ),
        fetcher=fetcher,
        png_compress_level=settings.png_compress_level,
        safety=LazySafetyChecker(settings.weights_dir, chosen, enabled=settings.safety_checker),
        weights_cache=WeightsCache(
            settings.data_dir / "trained-weights",
            max_bytes=settings.trained_weights_cache_bytes,
            max_download_bytes=settings.trained_weights_max_bytes,
        ),
        hub_url=settings.hub_url,
        threads=ThreadPolicy.for_device(
            chosen.name, settings.torch_threads, workers=settings.concurrency_per_device
        ),
    )


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
    engine = db.make_engine(settings.resolved_database_url())
    sessions = db.make_sessions(engine)
    registry = Registry(all_models())
    storage = storage or LocalStorage(settings.files_dir)
    clock = clock or SystemClock()
    secret = load_secret(settings)
    upload_service = UploadService.from_settings(settings, sessions, storage, secret, clock)
    file_inputs = FileInputs(
        upload_service,
        inline_max=settings.inline_data_uri_max_bytes,
        public_base_url=settings.public_base_url,
    )
    fetcher = Fetcher.from_settings(settings, local_files=file_inputs)
    if provider is None:
        provider = LocalProvider(lambda: runner_env_factory(settings, fetcher))
    bus = InProcessBus()
    notifier = CompletionNotifier()
    bus.subscribe(notifier.on_event)
    transitions = Transitions(sessions, bus, clock)
    flags = CancelFlags()
    executor = Executor(
        transitions=transitions,
        registry=registry,
        provider=provider,
        storage=storage,
        flags=flags,
        fetcher=fetcher,
        log_flush_interval=settings.log_flush_interval,
    )
    if queue is None:
        built_queue: Queue = InProcessQueue(
            executor.execute,
            flags,
            concurrency_per_device=settings.concurrency_per_device,
            grace_seconds=settings.shutdown_grace_seconds,
        )
    else:
        built_queue = queue(executor.execute, flags)
    service = PredictionService(
        sessions=sessions,
        registry=registry,
        provider=provider,
        queue=built_queue,
        transitions=transitions,
        notifier=notifier,
        clock=clock,
        page_size=settings.list_page_size,
        file_inputs=file_inputs,
    )
    links = WebLinks(secret, settings.web_link_ttl_seconds)
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
        upload_service,
    )


def create_app(settings: Settings, container: Container | None = None) -> FastAPI:
    container = container or build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate.upgrade(container.engine)
        container.queue.start()
        container.service.recover()
        try:
            yield
        finally:
            # The workers get their grace period in a thread: the event loop keeps
            # answering (health checks, the last waiting requests) meanwhile.
            await asyncio.to_thread(container.queue.stop)
            container.service.close()
            container.engine.dispose()

    app = FastAPI(title="repligate", version=__version__, lifespan=lifespan)
    app.state.container = container
    errors.install(app)
    for prefix in ("/v1", "/replicate/v1"):
        app.include_router(predictions.router, prefix=prefix)
        app.include_router(models.router, prefix=prefix)
        app.include_router(uploads.router, prefix=prefix)
    app.include_router(files.router)
    app.include_router(web.router)
    app.include_router(pages.router)
    app.include_router(health.router)
    return app
