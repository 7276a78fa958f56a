"""A real uvicorn server on a free loopback port, in a background thread, for tests and
benchmarks that talk to repligate over the network (the official client, ``bench/``).

    with LiveServer(create_app(settings)) as server:
        token = server.make_token()
        httpx.get(f"{server.url}/health")

The listening socket is bound here, before the server starts, so the port is known at
once and no other process can take it in between. ``start`` returns once ``/health``
answers; ``stop`` lets the lifespan finish (workers stopped, engine disposed).
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import httpx
import uvicorn

if TYPE_CHECKING:
    from fastapi import FastAPI

    from repligate.app import Container


class LiveServerError(RuntimeError):
    """The server did not come up (or did not go down) in time."""


class LiveServer:
    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        self.app = app
        # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets
        # that say they are TCP, and with proto 0 every small reply waits ~40 ms for the
        # client's delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # A request still waiting on a prediction must not hold shutdown forever.
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, name=f"repligate-live-server-{self.port}", daemon=True
        )
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The server's root, without a trailing slash (the base URL for ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def container(self) -> Container:
        container: Container = self.app.state.container
        return container

    def _serve(self) -> None:
        try:
            # Not the main thread, so uvicorn installs no signal handlers.
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # SystemExit when the lifespan fails to start
            self._failure = exc

    def start(self, timeout: float = 60.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if not self._thread.is_alive():
                    self._socket.close()
                    raise LiveServerError(f"the server thread exited: {self._failure!r}")
                if self._server.started:
                    try:
                        if client.get("/health").status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                time.sleep(0.02)
        self.stop()
        raise LiveServerError(f"no answer from {self.url}/health within {timeout} s")

    def stop(self, timeout: float = 60.0) -> None:
        # As `repligate serve` does on SIGTERM (serving.py): waiting requests answer now.
        self.container.service.stop_waiting()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise LiveServerError(f"the server at {self.url} did not stop in {timeout} s")
        self._socket.close()

    def make_token(self, name: str = "live") -> str:
        """A new API key on this server; returns its token."""
        from repligate.store import keys

        with self.container.sessions() as session:
            _, token = keys.create(session, name=name)
        return token

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
