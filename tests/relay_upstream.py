"""A small fault-injecting Replicate on loopback (aiohttp.web in its own thread), for the
relay's failure paths: keys refused (401), rate limits (429 + Retry-After), 500s, slow
answers, dropped connections, output files that have expired, iterator outputs that grow,
cancels. Predictions end when the test says so (``finish``), not on a clock.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@dataclass
class FakePrediction:
    id: str
    token: str
    body: dict[str, Any]
    status: str = "starting"
    logs: str = ""
    outputs: list[str] = field(default_factory=list)
    iterator: bool = False
    error: str | None = None
    canceled: bool = False


@dataclass
class Fault:
    """What the next matching requests get instead of an answer."""

    kind: str  # "status", "slow", "drop"
    method: str  # "create", "get", "cancel", "any"
    count: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None


class FaultyUpstream:
    def __init__(self, valid_tokens: set[str]) -> None:
        self.valid_tokens = set(valid_tokens)
        self.predictions: dict[str, FakePrediction] = {}
        self.by_idempotency: dict[str, str] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method kind, token, status)
        self.expired_files: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.slow_seconds = 2.0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- test controls -----------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def only(self) -> FakePrediction:
        (prediction,) = self.predictions.values()
        return prediction

    def run(self, prediction: FakePrediction, logs: str = "") -> None:
        prediction.status, prediction.logs = "processing", prediction.logs + logs

    def add_output(self, prediction: FakePrediction, color: tuple[int, int, int]) -> str:
        name = f"{prediction.id}-{len(prediction.outputs)}.png"
        self.files[name] = png(color)
        prediction.outputs.append(f"{self.url}/files/{name}")
        return name

    def finish(self, prediction: FakePrediction, status: str = "succeeded") -> None:
        prediction.status = status
        if status == "failed":
            prediction.error = "CUDA out of memory (upstream)"

    def count(self, kind: str, status: int | None = None) -> int:
        return sum(1 for k, _, s in self.requests if k == kind and status in (None, s))

    # -- server --------------------------------------------------------------------------

    def start(self) -> FaultyUpstream:
        app = web.Application()
        app.router.add_post("/v1/predictions", self._create)
        app.router.add_get("/v1/predictions", self._list)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            assert self._runner is not None
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------

    async def _gate(self, request: web.Request, kind: str) -> tuple[str, web.Response | None]:
        """Authenticate, then apply the first matching fault; (token, early answer)."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        fault = None
        with self._lock:
            for candidate in self.faults:
                if candidate.method in (kind, "any") and candidate.token in (None, token):
                    candidate.count -= 1
                    fault = candidate
                    if candidate.count <= 0:
                        self.faults.remove(candidate)
                    break
        if token not in self.valid_tokens:
            self.requests.append((kind, token, 401))
            return token, web.json_response(
                {"title": "Unauthenticated", "detail": "Invalid token", "status": 401}, status=401
            )
        if fault is not None:
            if fault.kind == "slow":
                await asyncio.sleep(self.slow_seconds)
            elif fault.kind == "drop":
                self.requests.append((kind, token, 0))
                assert request.transport is not None
                request.transport.close()
                return token, web.Response(status=500)
            else:
                self.requests.append((kind, token, fault.status))
                return token, web.json_response(
                    {"detail": "injected"}, status=fault.status, headers=fault.headers
                )
        self.requests.append((kind, token, 200))
        return token, None

    def _view(self, p: FakePrediction) -> dict[str, Any]:
        output: Any = list(p.outputs) if (p.iterator or len(p.outputs) != 1) else p.outputs[0]
        if not p.outputs:
            output = None
        if p.status in ("starting", "processing") and not p.iterator:
            output = None
        return {
            "id": p.id,
            "model": "x/y",
            "version": p.body.get("version"),
            "input": p.body.get("input"),
            "logs": p.logs,
            "output": output,
            "error": p.error,
            "status": p.status,
            "created_at": "2026-12-02T00:00:00.000000Z",
            "urls": {"get": f"{self.url}/v1/predictions/{p.id}"},
            "metrics": {"predict_time": 4.25} if p.status == "succeeded" else {},
        }

    async def _create(self, request: web.Request) -> web.Response:
        token, early = await self._gate(request, "create")
        if early is not None:
            return early
        body = await request.json()
        idem = request.headers.get("Idempotency-Key")
        with self._lock:
            if idem and idem in self.by_idempotency:
                return web.json_response(self._view(self.predictions[self.by_idempotency[idem]]))
            prediction = FakePrediction(id=f"up{len(self.predictions)}x", token=token, body=body)
            self.predictions[prediction.id] = prediction
            if idem:
                self.by_idempotency[idem] = prediction.id
        return web.json_response(self._view(prediction), status=201)

    async def _list(self, request: web.Request) -> web.Response:
        _, early = await self._gate(request, "list")
        return early or web.json_response({"results": [], "next": None})

    async def _get(self, request: web.Request) -> web.Response:
        _, early = await self._gate(request, "get")
        if early is not None:
            return early
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found"}, status=404)
        return web.json_response(self._view(prediction))

    async def _cancel(self, request: web.Request) -> web.Response:
        _, early = await self._gate(request, "cancel")
        if early is not None:
            return early
        prediction = self.predictions[request.match_info["id"]]
        prediction.canceled = True
        if prediction.status in ("starting", "processing"):
            prediction.status = "canceled"
        return web.json_response(self._view(prediction))

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in self.expired_files or name not in self.files:
            return web.Response(status=404, text="expired")
        return web.Response(body=self.files[name], content_type="image/png")


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (a bound, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")
