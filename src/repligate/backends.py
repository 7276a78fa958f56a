"""What the settings choose behind the container: where files are kept, which event bus
carries events, the local runners' environment, and the relay. ``app.build_container``
wires what these build; each heavy backend is imported only when it is chosen."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from repligate.bus import EventBus, EventKind, InProcessBus, PredictionEvent
from repligate.clock import Clock
from repligate.fetch import Fetcher
from repligate.lifecycle import Status
from repligate.links import WebLinks
from repligate.providers.base import Provider
from repligate.providers.local import LocalProvider
from repligate.queue.base import CancelFlags, Queue
from repligate.queue.inprocess import InProcessQueue
from repligate.records import Prediction
from repligate.registry import Registry
from repligate.runners.base import RunnerEnv
from repligate.settings import Settings
from repligate.storage.base import Storage
from repligate.storage.local import LocalStorage
from repligate.transitions import Transitions
from repligate.webhooks import Render

if TYPE_CHECKING:
    from repligate.relay.routes import RoutePlan
    from repligate.relay.scheduler import RelayScheduler


def runner_env_factory(
    settings: Settings, fetcher: Fetcher, on_pipeline_load: Callable[[int], None] | None = None
) -> RunnerEnv:
    from repligate.runners import device
    from repligate.runners.cache import PipelineCache
    from repligate.runners.safety import LazySafetyChecker
    from repligate.runners.threads import ThreadPolicy
    from repligate.runners.weights import WeightsLocator
    from repligate.runners.weights_cache import WeightsCache

    chosen = device.choose(settings.device)
    pipelines = PipelineCache(
        settings.pipeline_cache_bytes or device.memory_budget(chosen),
        release=lambda: device.release_memory(chosen),
    )
    pipelines.on_load = on_pipeline_load
    return RunnerEnv(
        device=chosen,
        weights=WeightsLocator(settings.weights_dir),
        pipelines=pipelines,
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


def storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        if not settings.s3_bucket:
            raise ValueError("REPLIGATE_STORAGE=s3 needs REPLIGATE_S3_BUCKET")
        from repligate.storage.s3 import S3Storage  # boto3 only where S3 is configured

        return S3Storage.connect(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_base_url=settings.s3_public_base_url,
        )
    return LocalStorage(settings.files_dir)


def queue(settings: Settings, execute: Callable[[str], None], flags: CancelFlags) -> Queue:
    """Where predictions of local models run: this process's worker threads, or the
    Celery broker (``repligate worker`` processes run them)."""
    if settings.queue == "celery":
        from repligate.queue.celery_queue import CeleryQueue  # celery only where chosen

        return CeleryQueue.from_settings(settings, flags)
    return InProcessQueue(
        execute,
        flags,
        concurrency_per_device=settings.concurrency_per_device,
        grace_seconds=settings.shutdown_grace_seconds,
    )


def build_bus(settings: Settings) -> EventBus:
    if settings.event_bus_url is None:
        return InProcessBus()
    try:
        from repligate.bus_redis import RedisBus
    except ImportError as error:
        raise RuntimeError(
            "REPLIGATE_EVENT_BUS_URL needs the redis package: pip install 'repligate[redis]'"
        ) from error
    return RedisBus(settings.event_bus_url, channel=settings.event_bus_channel)


def remote_cancels(cancel: Callable[[str], None]) -> Callable[[PredictionEvent], None]:
    """A cancel asked of another process reaches this one as that process's
    ``completed`` event with status ``canceled``: the worker running it here stops at its
    next step (its own final write loses the compare-and-set)."""

    def on_event(event: PredictionEvent) -> None:
        if (
            not event.local
            and event.kind is EventKind.COMPLETED
            and event.prediction.status is Status.CANCELED
        ):
            cancel(event.prediction.id)

    return on_event


def webhook_body(settings: Settings, storage: Storage, links: WebLinks) -> Render:
    """A webhook's body: the prediction object as its creator's GET shows it."""
    from repligate.api.wire import prediction_out

    fallback = settings.public_base_url or f"http://{settings.host}:{settings.port}"

    def render(prediction: Prediction) -> dict[str, Any]:
        return prediction_out(
            prediction,
            storage=storage,
            base_url=(settings.public_base_url or prediction.base_url or fallback).rstrip("/"),
            api_prefix=prediction.api_prefix,
            links=links,
        )

    return render


def build_relay(
    settings: Settings,
    provider: Provider,
    registry: Registry,
    sessions: sessionmaker[Session],
    transitions: Transitions,
    storage: Storage,
    fetcher: Fetcher,
    clock: Clock,
) -> tuple[RoutePlan | None, RelayScheduler | None]:
    """The route of each model, and the relay when some model goes to Replicate."""
    if not isinstance(provider, LocalProvider):
        return None, None  # a fake provider (tests) runs everything
    from repligate.relay.routes import RoutePlan

    routes = RoutePlan(settings, provider)
    if not routes.any_relayed(registry.all()):
        return routes, None
    from repligate.relay.scheduler import RelayScheduler

    relay = RelayScheduler(
        settings=settings,
        routes=routes,
        registry=registry,
        sessions=sessions,
        transitions=transitions,
        storage=storage,
        fetcher=fetcher,
        clock=clock,
    )
    return routes, relay
