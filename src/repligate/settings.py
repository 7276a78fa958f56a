"""Server settings: one object, read from the environment (prefix ``REPLIGATE_``).

Nothing is read at import time; ``Settings()`` reads the environment when called.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'repligate.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"
