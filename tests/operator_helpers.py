"""Shared by the tests of the operator's controls (limits, usage, retention): settings
that need no weights, the CLI on the same database, and real media files to measure."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from repligate.cli import app as cli_app
from repligate.settings import Settings


def lean_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None = None,
    **changes: Any,
) -> Settings:
    """Settings for an app on the fakes, and the same data dir and database for the CLI
    (through the environment, as an operator's shell has it)."""
    data_dir = tmp_path / "data"
    for name in ("REPLIGATE_DATABASE_URL", "REPLIGATE_USAGE_PRICES", "REPLIGATE_USAGE_PRICES_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPLIGATE_DATA_DIR", str(data_dir))
    if database_url is not None:
        monkeypatch.setenv("REPLIGATE_DATABASE_URL", database_url)
        changes["database_url"] = database_url
    # The server's own sweeper stays out of the way; the tests sweep when they mean to.
    base = {"data_dir": data_dir, "log_flush_interval": 0.0, "sweep_interval_seconds": 3600.0}
    return Settings(**{**base, **changes})


def cli(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def gif(width: int, height: int, frames: int, milliseconds: int) -> bytes:
    images = [Image.new("RGB", (width, height), (i * 40, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=milliseconds
    )
    return buffer.getvalue()


def mp4(width: int, height: int, frames: int, fps: int) -> bytes:
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            array = np.full((height, width, 3), index * 30, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
