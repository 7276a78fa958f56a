"""``create_app(settings)``: wires the store, queue, storage, provider and routers.

Nothing runs at import. The database is migrated and the workers start in the lifespan;
predictions a crashed process left behind are recovered then."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import __version__
from repligate.api import errors, files, health, models, predictions, web
from repligate.execution import Executor
from repligate.fetch import Fetcher
from repligate.models import all_models
from repligate.notify import CompletionNotifier
from repligate.providers.local import LocalProvider
from repligate.queue.base import CancelFlags
from repligate.queue.inprocess import InProcessQueue
from repligate.registry import Registry
from repligate.runners.base import RunnerEnv
from repligate.service import PredictionService
from repligate.settings import Settings
from repligate.storage.local import LocalStorage
from repligate.store import db, migrate

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: LocalStorage
    provider: LocalProvider
    queue: InProcessQueue
    service: PredictionService


def runner_env_factory(settings: Settings, fetcher: Fetcher) -> RunnerEnv:
    from repligate.runners import device
    from repligate.runners.cache import PipelineCache
    from repligate.runners.safety import LazySafetyChecker
    from repligate.runners.sdxl_weights import TrainedWeightsCache
    from repligate.runners.threads import ThreadPolicy
    from repligate.runners.weights import WeightsLocator

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
        trained_weights=TrainedWeightsCache(
            settings.data_dir / "trained-weights",
            max_bytes=settings.trained_weights_cache_bytes,
            max_download_bytes=settings.trained_weights_max_bytes,
        ),
        threads=ThreadPolicy.for_device(
            chosen.name, settings.torch_threads, workers=settings.concurrency_per_device
        ),
    )


def build_container(settings: Settings) -> Container:
    engine = db.make_engine(settings.resolved_database_url())
    sessions = db.make_sessions(engine)
    registry = Registry(all_models())
    storage = LocalStorage(settings.files_dir)
    fetcher = Fetcher.from_settings(settings)
    provider = LocalProvider(lambda: runner_env_factory(settings, fetcher))
    notifier = CompletionNotifier()
    flags = CancelFlags()
    executor = Executor(
        sessions=sessions,
        registry=registry,
        provider=provider,
        storage=storage,
        flags=flags,
        fetcher=fetcher,
        on_finished=notifier.notify,
        log_flush_interval=settings.log_flush_interval,
    )
    queue = InProcessQueue(
        executor.execute, flags, concurrency_per_device=settings.concurrency_per_device
    )
    service = PredictionService(
        sessions=sessions,
        registry=registry,
        provider=provider,
        queue=queue,
        notifier=notifier,
        page_size=settings.list_page_size,
    )
    return Container(settings, engine, sessions, storage, provider, queue, service)


def create_app(settings: Settings) -> FastAPI:
    container = build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate.upgrade(container.engine)
        container.queue.start()
        container.service.recover()
        try:
            yield
        finally:
            container.queue.stop()
            container.engine.dispose()

    app = FastAPI(title="repligate", version=__version__, lifespan=lifespan)
    app.state.container = container
    errors.install(app)
    for prefix in ("/v1", "/replicate/v1"):
        app.include_router(predictions.router, prefix=prefix)
        app.include_router(models.router, prefix=prefix)
    app.include_router(files.router)
    app.include_router(web.router)
    app.include_router(health.router)
    return app
