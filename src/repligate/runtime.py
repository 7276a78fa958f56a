"""What an API process and a ``repligate worker`` process both build from the settings:
the database, storage, file fetching, the model provider, the event bus and the
transition point, and the executor that runs claimed predictions under a lease.
``app.build_container`` adds the API's parts; ``worker.py`` adds Celery's."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repligate import backends
from repligate.bus import EventBus, local_only
from repligate.clock import Clock, SystemClock
from repligate.execution import Executor
from repligate.fetch import Fetcher
from repligate.file_inputs import FileInputs
from repligate.leases import LeaseKeeper
from repligate.links import load_secret
from repligate.metrics import Metrics
from repligate.models import all_models
from repligate.notify import CompletionNotifier
from repligate.providers.base import Provider
from repligate.providers.local import LocalProvider
from repligate.queue.base import CancelFlags
from repligate.registry import Registry
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.store import db
from repligate.transitions import Transitions
from repligate.uploads import UploadService


@dataclass
class Core:
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    storage: Storage
    clock: Clock
    secret: bytes
    uploads: UploadService
    file_inputs: FileInputs
    fetcher: Fetcher
    metrics: Metrics
    provider: Provider
    bus: EventBus
    notifier: CompletionNotifier
    transitions: Transitions
    flags: CancelFlags
    leases: LeaseKeeper
    executor: Executor


def build_core(
    settings: Settings,
    *,
    storage: Storage | None = None,
    provider: Provider | None = None,
    clock: Clock | None = None,
) -> Core:
    """The shared parts; each backend can be given (the fakes in ``repligate.testing``),
    otherwise the settings choose it (``backends.py``)."""
    engine = db.make_engine(settings.resolved_database_url(), settings.pool_options())
    sessions = db.make_sessions(engine)
    registry = Registry(all_models())
    storage = storage or backends.storage(settings)
    clock = clock or SystemClock()
    secret = load_secret(settings)
    uploads = UploadService.from_settings(settings, sessions, storage, secret, clock)
    file_inputs = FileInputs(
        uploads,
        inline_max=settings.inline_data_uri_max_bytes,
        public_base_url=settings.public_base_url,
    )
    fetcher = Fetcher.from_settings(settings, local_files=file_inputs)
    metrics = Metrics(sessions)
    fetcher.on_refusal = metrics.fetch_refused
    if provider is None:
        provider = LocalProvider(
            lambda: backends.runner_env_factory(settings, fetcher, metrics.pipeline_loaded)
        )
    bus = backends.build_bus(settings)
    # Counting subscribers take only this process's events; the others hear them all.
    bus.subscribe(local_only(metrics.on_event))
    notifier = CompletionNotifier()
    bus.subscribe(notifier.on_event)
    transitions = Transitions(sessions, bus, clock)
    flags = CancelFlags()
    leases = LeaseKeeper(transitions, flags, lease_seconds=settings.lease_seconds)
    executor = Executor(
        transitions=transitions,
        registry=registry,
        provider=provider,
        storage=storage,
        flags=flags,
        fetcher=fetcher,
        log_flush_interval=settings.log_flush_interval,
        leases=leases,
    )
    return Core(
        engine=engine,
        sessions=sessions,
        registry=registry,
        storage=storage,
        clock=clock,
        secret=secret,
        uploads=uploads,
        file_inputs=file_inputs,
        fetcher=fetcher,
        metrics=metrics,
        provider=provider,
        bus=bus,
        notifier=notifier,
        transitions=transitions,
        flags=flags,
        leases=leases,
        executor=executor,
    )
