"""The uvicorn server that ``repligate serve`` runs.

On SIGTERM or Ctrl-C, uvicorn first waits for open connections to close, and only then
runs the app's shutdown (where the workers get their grace period). A ``Prefer: wait``
request could hold that first phase for a minute, so on the signal every waiting request
answers at once with the prediction as it stands; the client then polls.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn


def uvicorn_config(app: Any, *, host: str, port: int, access_log: bool) -> uvicorn.Config:
    """How ``repligate serve`` runs uvicorn (``bench/api.py`` serves its yardstick alike)."""
    return uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log)


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def app_from_environment() -> Any:
    """The app for one of ``repligate serve --workers N``'s processes, built from the
    environment (uvicorn imports this factory in each process it starts)."""
    from repligate.app import create_app
    from repligate.settings import Settings

    return create_app(Settings())


def run_workers(*, host: str, port: int, workers: int, access_log: bool) -> None:
    """``workers`` API processes sharing one listening socket, under uvicorn's supervisor
    (which restarts one that dies). Each builds its own app, with its own in-process
    queue workers. Unlike the single-process server, a SIGTERM does not release
    ``Prefer: wait`` requests early: each process finishes them (at most the wait)."""
    uvicorn.run(
        "repligate.serving:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=access_log,
    )
