"""Server settings: one object, read from the environment (prefix ``REPLIGATE_``).

Nothing is read at import time; ``Settings()`` reads the environment when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPLIGATE_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="SQLite file and output files")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/repligate.db"
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Local weights: <weights_dir>/<owner>__<name>/ overrides the hub repo",
    )
    public_base_url: str | None = Field(
        default=None, description="Base of absolute URLs (outputs, urls.get); else the request's"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn's line per request: formatting and writing it costs about a third of what
    # serving a small request costs, so it is off unless asked for (a proxy in front
    # usually keeps its own).
    access_log: bool = False

    # Database processes (scale-out). False: this process never migrates; it refuses to
    # start while migrations are pending, and the operator runs `repligate migrate`.
    migrate_on_start: bool = True
    # PostgreSQL connection pool, per process (SQLite needs none of these).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    db_pool_timeout: float = Field(default=30.0, gt=0)
    # Seconds before a pooled connection is replaced (-1: never); pre-ping checks each one.
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_pool_pre_ping: bool = True

    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    list_page_size: int = Field(default=100, ge=1, le=1000)
    # Seconds a Prefer: wait request holds when no number is given (Replicate: 60).
    default_wait_seconds: int = Field(default=60, ge=1, le=60)

    device: str | None = Field(default=None, description="cuda, cuda:1, mps or cpu; else auto")
    concurrency_per_device: int = Field(default=1, ge=1, le=16)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU inference threads; unset: the cores other processes leave free",
    )
    # Flushing logs is a database write; progress lines are batched at most this often.
    log_flush_interval: float = Field(default=0.5, ge=0.0)
    # On SIGTERM, running predictions get this long to finish; then they are handed back
    # to the queue and run again after the restart. Queued ones always stay queued.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    png_compress_level: int = Field(default=4, ge=0, le=9)
    # Loaded pipelines are kept while their weights fit in this many bytes (shared modules
    # counted once); least recently used first out. Default: 70% of the GPU's memory, or
    # half the machine's RAM on CPU.
    pipeline_cache_bytes: int | None = Field(default=None, ge=1)

    # File inputs (fetch.py). Private, loopback, link-local (cloud metadata) and other
    # non-public addresses are refused unless allowed: all of them, or some networks.
    fetch_allow_private: bool = False
    fetch_allowed_networks: list[str] = Field(
        default_factory=list, description='CIDRs file URLs may reach, e.g. ["10.1.0.0/16"]'
    )
    fetch_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    fetch_timeout_seconds: float = Field(default=60.0, gt=0, description="Whole download")
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    max_image_pixels: int = Field(default=64_000_000, ge=1)
    # The SD family's NSFW filter (runners/safety.py); false turns it off server-wide.
    safety_checker: bool = True
    # Hugging Face Hub base URL: Flux's hf_lora Hub forms download from it (as HF_ENDPOINT).
    hub_url: str = Field(default="https://huggingface.co", pattern=r"^https?://[^/]+/?$")
    # Weights named by URL (SDXL's replicate_weights, Flux's hf_lora), cached under
    # <data_dir>/trained-weights, least recently used first out past the cap.
    trained_weights_cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    trained_weights_max_bytes: int = Field(
        default=10 * 1024**3, ge=1, description="Largest trained-weights tarball, unpacked"
    )

    # Uploaded files (POST /v1/files; uploads.py). As Replicate: 100 MB, kept 24 hours.
    # Their download links are signed with secret_key (below).
    files_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    files_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    # A data-URI file input longer than this (in characters) is stored as an uploaded file
    # when the prediction is created, and the prediction keeps that file's URL.
    inline_data_uri_max_bytes: int = Field(default=256 * 1024, ge=0)

    # Web pages and output files (links.py, api/web.py, api/files.py). urls.web carries a
    # link signed with the secret key; unset, one is generated into <data_dir>/secret.
    # Several API processes on one database need the same key. Output files are sent
    # private by default: a shared cache must not keep (and serve) someone's images.
    secret_key: SecretStr | None = Field(default=None, min_length=16)
    web_link_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    output_cache_control: str = Field(
        default="private, max-age=3600", description="Cache-Control of output files"
    )

    # Webhooks (webhooks.py). Like file fetches, they never reach private, loopback or
    # metadata addresses unless allowed; every redirect is checked again.
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = Field(
        default_factory=list, description='CIDRs webhooks may reach, e.g. ["10.1.0.0/16"]'
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="One attempt")
    webhook_max_redirects: int = Field(default=3, ge=0, le=10)
    # The completed event is retried with backoff (1 s, 2 s, 4 s ...) until this long after
    # its first try (Replicate's last try is about a minute after completion).
    webhook_retry_seconds: float = Field(default=60.0, ge=0)
    # Threads sending webhooks; 0: deliveries are sent only when the outbox is drained by
    # hand (WebhookDeliverer.deliver_due), as tests do.
    webhook_workers: int = Field(default=4, ge=0, le=64)

    # Rate limits, quotas, usage and retention (ratelimit.py, usage.py, retention.py).
    # Requests per key, as the limits library writes them ("600/minute"; several joined
    # by ";"; "none" for no limit). Replicate's: 600 creates and 3,000 other requests a
    # minute. `repligate keys limits NAME` sets them per key.
    create_rate_limit: str = "600/minute"
    read_rate_limit: str = "3000/minute"
    # Where the counts live: memory:// (this process) or redis://host:6379/0 (shared by
    # every API process; needs the redis client package).
    rate_limit_storage_url: str = "memory://"
    # The event bus (bus.py): unset, events stay in this process (the embedded default);
    # redis://host:6379/0, every API process and worker hears the others' events
    # (bus_redis.py): waiters and streams wake, cancels reach the worker running it.
    event_bus_url: str | None = None
    # The pub/sub channel: one per deployment sharing a Redis.
    event_bus_channel: str = "repligate:events"
    # A key's own limits are read from the database at most this often per process.
    key_limits_cache_seconds: float = Field(default=5.0, ge=0)
    # Inputs, outputs (and their files) and logs of predictions that finished longer ago
    # than this are removed (data_removed: true). Unset: kept. Replicate's is 3600.
    prediction_retention_seconds: int | None = Field(default=None, ge=60)
    # Rows of uploaded files gone (expired or deleted) longer than this are deleted; their
    # bytes go as soon as they are gone.
    file_record_retention_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    # How often the server's sweeper runs (retention, file expiry, usage catch-up).
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # Unit prices per model, as data: {"owner/name" or "*": {"per_image": 0.002, ...}}
    # (usage.py names the quantities). JSON here, or a JSON file.
    usage_prices: dict[str, dict[str, float | str]] = Field(default_factory=dict)
    usage_prices_file: Path | None = None
    usage_currency: str = "USD"

    @field_validator("create_rate_limit", "read_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from repligate.ratelimit import parse_rate

        parse_rate(value)  # ValueError saying how to write one
        return value

    # The relay to Replicate (relay/). Each model runs `local`, `replicate` or `auto`
    # (local when its requirements and weights are here, else relayed when upstream
    # tokens are set). REPLIGATE_ROUTES: a JSON object, e.g. {"cjwbw/rembg": "replicate"}.
    route: Literal["local", "replicate", "auto"] = "auto"
    routes: dict[str, Literal["local", "replicate", "auto"]] = Field(default_factory=dict)
    # Trusted as configured: output files on this host are copied even when it is a
    # loopback or private address (the operator chose it).
    upstream_url: str = "https://api.replicate.com/v1"
    # Comma-separated upstream API tokens (the key pool); never shown anywhere.
    upstream_tokens: SecretStr | None = None
    # Per upstream key: requests at once, and requests per minute (Replicate allows 600
    # creates and 3,000 other requests a minute per account).
    upstream_key_concurrency: int = Field(default=200, ge=1)
    upstream_creates_per_minute: float = Field(default=600, gt=0)
    upstream_requests_per_minute: float = Field(default=3000, gt=0)
    # Polls start this often and back off to the max while nothing changes upstream.
    upstream_poll_min_seconds: float = Field(default=0.5, gt=0)
    upstream_poll_max_seconds: float = Field(default=10.0, gt=0)
    # 5xx and network errors: retried this many times, backing off (jittered) up to the cap.
    upstream_max_retries: int = Field(default=5, ge=0)
    upstream_backoff_seconds: float = Field(default=0.5, gt=0)
    upstream_backoff_cap_seconds: float = Field(default=30.0, gt=0)
    upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    # How often keys taken out of the pool (401/403) are checked again.
    upstream_key_recheck_seconds: float = Field(default=300.0, gt=0)
    # An async create waits this long for the upstream create, so the upstream id is
    # stored before the create returns; past it, the create goes on in the background.
    upstream_create_wait_seconds: float = Field(default=10.0, ge=0)
    # With public_base_url set, upstream webhooks are received (and polls slow down);
    # the secret is Replicate's (GET /v1/webhooks/default/secret, whsec_...).
    upstream_webhook_secret: SecretStr | None = None

    # OpenAI's images API (api/openai_images.py): names the `model` field may use for a
    # model (JSON, e.g. {"dall-e-3": "stability-ai/sdxl"}), the models used when a request
    # names none, and how long a call waits for its prediction before answering 504.
    openai_model_aliases: dict[str, str] = Field(default_factory=dict)
    openai_default_model: str = "stability-ai/stable-diffusion"
    openai_edit_model: str = "stability-ai/stable-diffusion-inpainting"
    openai_wait_seconds: int = Field(default=300, ge=1, le=3600)

    # GET /metrics (Prometheus): "open", "off" (404), or "token:SECRET" (a bearer token).
    # With PROMETHEUS_MULTIPROC_DIR set, every API process's counts are added up.
    metrics: str = "open"

    @field_validator("metrics")
    @classmethod
    def _metrics_mode(cls, value: str) -> str:
        if value in ("open", "off") or (value.startswith("token:") and len(value) > 6):
            return value
        raise ValueError('REPLIGATE_METRICS is "open", "off" or "token:SECRET"')

    # Where outputs and uploads are kept: "local" (files under data_dir) or "s3" (a bucket;
    # credentials and region from the usual AWS settings, see storage/s3.py).
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket")
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible store (MinIO, R2, ...); default AWS"
    )
    s3_public_base_url: str | None = Field(
        default=None,
        description="Outputs link here (public bucket or CDN) instead of /files/ on the API",
    )

    # Where predictions of local models run: "inprocess" (worker threads in each API
    # process, the embedded default) or "celery" (a broker carries them to
    # `repligate worker` processes, on this host or others; queue.celery_app).
    queue: Literal["inprocess", "celery"] = "inprocess"
    # The Celery broker: redis://host:6379/1 or amqp://user:pass@host:5672//.
    broker_url: str | None = None
    # Celery queue names are "<prefix>.<owner>.<name>", one per model: one per deployment
    # sharing a broker.
    celery_queue_prefix: str = "repligate"
    # A worker holds a lease on the prediction it runs and renews it every third of this;
    # a prediction whose lease ran out (its worker died) is queued again, or failed after
    # max_attempts runs (leases.py).
    lease_seconds: float = Field(default=60.0, ge=1.0)
    max_attempts: int = Field(default=2, ge=1, le=10)

    @model_validator(mode="after")
    def _celery_needs_a_broker(self) -> Settings:
        if self.queue != "celery":
            return self
        if not self.broker_url:
            raise ValueError("REPLIGATE_QUEUE=celery needs REPLIGATE_BROKER_URL")
        if self.event_bus_url is None:
            # Completions, logs and cancels must cross processes: a Redis broker carries
            # them too; with another broker the operator names a Redis for events.
            if not self.broker_url.startswith(("redis://", "rediss://")):
                raise ValueError(
                    "REPLIGATE_QUEUE=celery with a non-Redis broker needs "
                    "REPLIGATE_EVENT_BUS_URL=redis://... (events cross processes there)"
                )
            self.event_bus_url = self.broker_url
        return self

    def pool_options(self) -> dict[str, object]:
        """``db.make_engine``'s pool keywords (used on PostgreSQL only)."""
        return {
            "pool_size": self.db_pool_size,
            "max_overflow": self.db_max_overflow,
            "pool_timeout": self.db_pool_timeout,
            "pool_recycle": self.db_pool_recycle,
            "pool_pre_ping": self.db_pool_pre_ping,
        }

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'repligate.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    def upstream_token_list(self) -> list[str]:
        """The upstream key pool, in the order given (blank entries dropped)."""
        if self.upstream_tokens is None:
            return []
        raw = self.upstream_tokens.get_secret_value()
        return [token.strip() for token in raw.split(",") if token.strip()]
