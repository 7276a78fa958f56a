"""Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

What is counted, and where it comes from:
- ``repligate_predictions_total{model,status}``: finished predictions, one per
  ``completed`` event on the bus (each prediction completes once);
- ``repligate_queue_wait_seconds``, ``repligate_predict_time_seconds``,
  ``repligate_total_time_seconds`` (histograms by model): from the ``start`` and
  ``completed`` events, with the times the transition point recorded;
- ``repligate_queue_depth`` and ``repligate_predictions_in_flight{provider}`` (``local`` or
  ``replicate``): read from the database at each scrape, so every process agrees;
- ``repligate_pipeline_cache_bytes`` and ``repligate_pipeline_loads_total``: this
  process's pipeline cache (``runners/cache.py``);
- ``repligate_fetch_refusals_total{reason}``: file inputs refused (``fetch.py``), by a
  short reason (``blocked_address``, ``too_large``, ``timeout`` ...);
- ``repligate_webhook_deliveries_total{event,outcome}``: each try, ``delivered``,
  ``failed`` or ``retrying`` (``webhooks.py``);
- ``repligate_upstream_requests_total{method,status}``: each call to Replicate by the
  relay (``relay/upstream.py``), ``status`` ``no_answer`` when none came.

Each app has its own ``CollectorRegistry``, so several apps in one process (tests) count
apart. With ``PROMETHEUS_MULTIPROC_DIR`` set (before ``prometheus_client`` is first
imported; empty the folder before the processes start), prometheus_client's multiprocess
mode is on: every process writes its counts there and a scrape of any process adds them
up. The counters then belong to no registry of their own, and the cache gauge adds up the
live processes' values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from repligate.bus import EventKind, PredictionEvent
from repligate.store import db, stats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# Seconds: from a cached tiny model (tens of ms) to long video runs and slow queues.
TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# The first phrase found in a refusal's message names its reason (fetch.py's messages).
_REFUSAL_REASONS = (
    ("cloud metadata", "blocked_address"),
    ("is private", "blocked_address"),
    ("is loopback", "blocked_address"),
    ("is link-local", "blocked_address"),
    ("is reserved", "blocked_address"),
    ("is unspecified", "blocked_address"),
    ("is multicast", "blocked_address"),
    ("is shared", "blocked_address"),
    ("longer than", "timeout"),
    ("more than", "too_large"),
    ("larger than", "too_large"),
    ("redirect", "redirects"),
    ("answered", "http_status"),
    ("could not connect", "connect"),
    ("could not be resolved", "connect"),
    ("has no address", "connect"),
    ("scheme", "scheme"),
    ("must be", "scheme"),
    ("not a valid url", "invalid_url"),
    ("no host", "invalid_url"),
    ("data uri", "invalid_data_uri"),
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def refusal_reason(message: str) -> str:
    """A short, bounded label for a fetch refusal's message."""
    text = message.lower()
    for phrase, reason in _REFUSAL_REASONS:
        if phrase in text:
            return reason
    return "other"


class Metrics:
    """The server's metrics: a bus subscriber, a few hooks the parts call, and the
    database counts read at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._sessions = sessions
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        # In multiprocess mode the values live in the shared folder, and a scrape reads
        # them back (render); registering them here too would count this process twice.
        owner: CollectorRegistry | None = None if self.multiprocess else self.registry
        self.predictions = Counter(
            "repligate_predictions",
            "Finished predictions, by model and final status.",
            ["model", "status"],
            registry=owner,
        )
        self.queue_wait = Histogram(
            "repligate_queue_wait_seconds",
            "Seconds from create until a worker started the prediction.",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=owner,
        )
        self.predict_time = Histogram(
            "repligate_predict_time_seconds",
            "Seconds the model ran (metrics.predict_time).",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=owner,
        )
        self.total_time = Histogram(
            "repligate_total_time_seconds",
            "Seconds from create until the prediction finished (metrics.total_time).",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=owner,
        )
        self.pipeline_bytes = Gauge(
            "repligate_pipeline_cache_bytes",
            "Bytes of the pipelines held in memory by the pipeline cache.",
            registry=owner,
            multiprocess_mode="livesum",
        )
        self.pipeline_loads = Counter(
            "repligate_pipeline_loads",
            "Pipelines loaded into the cache (a miss).",
            registry=owner,
        )
        self.fetch_refusals = Counter(
            "repligate_fetch_refusals",
            "File inputs refused, by reason.",
            ["reason"],
            registry=owner,
        )
        self.webhook_deliveries = Counter(
            "repligate_webhook_deliveries",
            "Webhook delivery tries, by event and outcome (delivered, failed, retrying).",
            ["event", "outcome"],
            registry=owner,
        )
        self.upstream_requests = Counter(
            "repligate_upstream_requests",
            "Requests the relay sent to Replicate, by method and answer status.",
            ["method", "status"],
            registry=owner,
        )
        self._database = _DatabaseCounts(sessions)
        self.registry.register(self._database)

    # -- what the parts report ----------------------------------------------------------

    def on_event(self, event: PredictionEvent) -> None:
        prediction = event.prediction
        if event.kind is EventKind.STARTED and prediction.started_at is not None:
            wait = (prediction.started_at - prediction.created_at).total_seconds()
            self.queue_wait.labels(prediction.model).observe(max(wait, 0.0))
        elif event.kind is EventKind.COMPLETED:
            self.predictions.labels(prediction.model, prediction.status.value).inc()
            if prediction.predict_time is not None:
                self.predict_time.labels(prediction.model).observe(prediction.predict_time)
            if prediction.total_time is not None:
                self.total_time.labels(prediction.model).observe(prediction.total_time)

    def fetch_refused(self, message: str) -> None:
        self.fetch_refusals.labels(refusal_reason(message)).inc()

    def webhook_tried(self, event: str, outcome: str) -> None:
        self.webhook_deliveries.labels(event, outcome).inc()

    def upstream_answered(self, method: str, status: int) -> None:
        self.upstream_requests.labels(method, str(status) if status else "no_answer").inc()

    def pipeline_loaded(self, held_bytes: int) -> None:
        self.pipeline_loads.inc()
        self.pipeline_bytes.set(held_bytes)

    # -- the scrape ---------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The exposition (body, content type), read now."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self._database)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _DatabaseCounts:
    """The queue's depth and the running predictions by provider, read at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with db.connect(self._sessions) as session:
            depth = stats.queue_depth(session)
            running = stats.running_by_provider(session)
        yield GaugeMetricFamily(
            "repligate_queue_depth", "Predictions created and not yet started.", value=depth
        )
        by_provider = GaugeMetricFamily(
            "repligate_predictions_in_flight",
            "Predictions running now, by provider (local, or relayed to replicate).",
            labels=["provider"],
        )
        for provider, count in sorted(running.items()):
            by_provider.add_metric([provider], count)
        yield by_provider
