"""The relay at scale: 1,000 predictions of 10 s each in flight at once through one
``repligate serve`` process, every model routed to ``replicate``, against a slow fake
upstream on loopback. Prints a table, never passes or fails.

    python bench/relay.py                    # N=1000, 10 s predictions
    python bench/relay.py -n 200 --seconds 5 --skip-httpx

Beside the server, in the same run and against the same fake upstream, two bare floors
(research/relay-anchor.md): an asyncio relay with one aiohttp session, and the same with
httpx.AsyncClient, each creating N predictions and polling every 0.5 s. They are what
the choice of HTTP client rests on (CPU per upstream request at 1,000 connections).

Measured per process: peak RSS (VmHWM, import and startup included), RSS just before
the batch (idle), (peak - idle) / N, CPU (utime+stime from /proc) over the batch per
upstream request, wall time from the first create to the last success, and how many
predictions were lost (not succeeded with the expected output file). The server's CPU
also covers the inbound API: N creates, then the load generator's polls every 2 s
(``--inbound poll``), or N creates held with ``Prefer: wait=60`` (``--inbound wait``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- the fake upstream (own process) ---------------------------------------------------


def serve_upstream(port: int, seconds: float) -> None:
    from aiohttp import web
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    picture = buffer.getvalue()
    created: dict[str, float] = {}
    stats = {"creates": 0, "gets": 0}
    base = f"http://127.0.0.1:{port}"

    def view(pid: str) -> dict[str, Any]:
        done = time.monotonic() - created[pid] >= seconds
        return {
            "id": pid,
            "status": "succeeded" if done else "processing",
            "output": [f"{base}/files/{pid}.png"] if done else None,
            "logs": "",
            "error": None,
            "metrics": {"predict_time": seconds} if done else {},
            "urls": {"get": f"{base}/v1/predictions/{pid}"},
        }

    async def create(request: web.Request) -> web.Response:
        await request.read()
        stats["creates"] += 1
        pid = f"up{stats['creates']}"
        created[pid] = time.monotonic()
        return web.json_response(view(pid), status=201)

    async def get(request: web.Request) -> web.Response:
        stats["gets"] += 1
        return web.json_response(view(request.match_info["id"]))

    async def cancel(request: web.Request) -> web.Response:
        return web.json_response(view(request.match_info["id"]))

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=picture, content_type="image/png")

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(request: web.Request) -> web.Response:
        stats.update(creates=0, gets=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/v1/predictions", create)
    app.router.add_get("/v1/predictions/{id}", get)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel)
    app.router.add_get("/files/{name}", file)
    app.router.add_get("/_stats", get_stats)
    app.router.add_post("/_reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the bare floors (own process each) ---------------------------------------------------


async def floor(client: str, upstream: str, n: int) -> dict[str, Any]:
    """Create N, poll each every 0.5 s until it succeeded, copy its output (in memory)."""
    pid = os.getpid()
    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n))

        async def call(method: str, url: str) -> dict[str, Any]:
            async with session.request(method, url, json={} if method == "POST" else None) as r:
                return dict(await r.json()) if url.find("/files/") < 0 else {"n": await r.read()}

        close = session.close
    else:
        import httpx

        hclient = httpx.AsyncClient(limits=httpx.Limits(max_connections=n), timeout=None)

        async def call(method: str, url: str) -> dict[str, Any]:
            r = await hclient.request(method, url, json={} if method == "POST" else None)
            return dict(r.json()) if url.find("/files/") < 0 else {"n": r.content}

        close = hclient.aclose

    async def one() -> bool:
        p = await call("POST", f"{upstream}/v1/predictions")
        while p["status"] != "succeeded":
            await asyncio.sleep(0.5)
            p = await call("GET", f"{upstream}/v1/predictions/{p['id']}")
        return bool((await call("GET", p["output"][0]))["n"])

    idle, cpu0, t0 = proc_status(pid, "VmRSS"), proc_cpu(pid), time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    wall, cpu = time.monotonic() - t0, proc_cpu(pid) - cpu0
    await close()
    ok = sum(1 for r in results if r is True)
    return {"idle": idle, "peak": proc_status(pid, "VmHWM"), "cpu": cpu, "wall": wall, "ok": ok}


# -- the driver --------------------------------------------------------------------------


def upstream_stats(url: str, path: str = "/_stats", method: str = "GET") -> dict[str, int]:
    import httpx

    return dict(httpx.request(method, url + path).json())


def run_floor(client: str, upstream: str, n: int) -> dict[str, Any]:
    upstream_stats(upstream, "/_reset", "POST")
    out = subprocess.run(
        [sys.executable, str(HERE), "--role", "floor", "--client", client, "--upstream", upstream,
         "-n", str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    stats = upstream_stats(upstream)
    result["requests"] = stats["creates"] + stats["gets"] + n  # + the output downloads
    return result


async def drive_server(url: str, token: str, n: int, inbound: str) -> tuple[int, float]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    version = "stability-ai/stable-diffusion"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n), headers=headers
    ) as session:

        async def one() -> bool | str:
            body = {"version": version, "input": {"prompt": "a fox"}}
            # poll: answered once upstream took it, then polled every 2 s (Replicate's
            # default). wait: held until it ends (Prefer: wait=60), polled after if needed.
            wait = {"Prefer": "wait=60"} if inbound == "wait" else {}
            async with session.post(f"{url}/v1/predictions", json=body, headers=wait) as r:
                p = await r.json()
            while p["status"] not in ("succeeded", "failed", "canceled"):
                await asyncio.sleep(2.0)
                async with session.get(f"{url}/v1/predictions/{p['id']}") as r:
                    p = await r.json()
            if p["status"] != "succeeded" or not p["output"][0].startswith(url):
                return f"{p['status']}: {p['error']}"
            async with session.get(p["output"][0]) as r:
                return (await r.read()).startswith(b"\x89PNG")

        t0 = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        reasons = Counter(repr(r)[:200] for r in results if r is not True)
        for reason, count in reasons.most_common(5):
            print(f"lost {count}: {reason}", file=sys.stderr)
        return sum(1 for r in results if r is True), time.monotonic() - t0


def run_server(upstream: str, n: int, inbound: str) -> dict[str, Any]:
    import httpx

    port = free_port()
    data = tempfile.mkdtemp(prefix="repligate-bench-relay-")
    env = {
        **os.environ,
        "REPLIGATE_DATA_DIR": data,
        "REPLIGATE_ROUTE": "replicate",
        "REPLIGATE_UPSTREAM_URL": upstream + "/v1",
        "REPLIGATE_UPSTREAM_TOKENS": "bench-token-1",
        # The fake has no rate limit: the anchor's stress setting, a poll every 0.5 s.
        "REPLIGATE_UPSTREAM_CREATES_PER_MINUTE": "1000000",
        "REPLIGATE_UPSTREAM_REQUESTS_PER_MINUTE": "1000000",
        "REPLIGATE_UPSTREAM_KEY_CONCURRENCY": str(n),
        "REPLIGATE_UPSTREAM_POLL_MIN_SECONDS": "0.5",
        "REPLIGATE_UPSTREAM_POLL_MAX_SECONDS": "0.5",
        # The load generator is one API key standing for 1,000 users: lift its own
        # per-key limits (Replicate's 600 creates / 3,000 reads a minute) so that every
        # prediction is admitted; the limiter still counts each request.
        "REPLIGATE_CREATE_RATE_LIMIT": "1000000/minute",
        "REPLIGATE_READ_RATE_LIMIT": "1000000/minute",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "repligate.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        token = server.stdout.readline().strip()
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        upstream_stats(upstream, "/_reset", "POST")
        idle, cpu0 = proc_status(server.pid, "VmRSS"), proc_cpu(server.pid)
        ok, wall = asyncio.run(drive_server(url, token, n, inbound))
        cpu = proc_cpu(server.pid) - cpu0
        peak = proc_status(server.pid, "VmHWM")
        torch = "torch" in Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    stats = upstream_stats(upstream)
    requests = stats["creates"] + stats["gets"] + n
    return {"idle": idle, "peak": peak, "cpu": cpu, "wall": wall, "ok": ok,
            "requests": requests, "torch": torch}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="driver", choices=["driver", "upstream", "floor"])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", default="aiohttp")
    parser.add_argument("--upstream", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--skip-httpx", action="store_true")
    parser.add_argument("--inbound", default="poll", choices=["poll", "wait"])
    args = parser.parse_args()
    if args.role == "upstream":
        serve_upstream(args.port, args.seconds)
        return
    if args.role == "floor":
        print(json.dumps(asyncio.run(floor(args.client, args.upstream, args.n))))
        return

    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(HERE), "--role", "upstream", "--port", str(port),
         "--seconds", str(args.seconds)],
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{port}"
    time.sleep(1.5)
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        rows.append(
            ("repligate serve, all models relayed", run_server(upstream, args.n, args.inbound))
        )
        rows.append(("floor: bare asyncio + aiohttp", run_floor("aiohttp", upstream, args.n)))
        if not args.skip_httpx:
            rows.append(("floor: bare asyncio + httpx", run_floor("httpx", upstream, args.n)))
    finally:
        fake.terminate()
        fake.wait(10)
    n = args.n
    print(f"\nN = {n} predictions of {args.seconds:g} s each, all at once; polls every 0.5 s;")
    print(f"inbound to the server: {args.inbound}\n")
    head = (
        "what",
        "peak MB",
        "idle MB",
        "KB/pred",
        "CPU ms/req",
        "reqs",
        "wall s",
        "pred/s",
        "lost",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    floor_peak = rows[1][1]["peak"] if len(rows) > 1 else rows[0][1]["peak"]
    for name, r in rows:
        print(
            f"| {name} | {r['peak'] / 2**20:.0f} | {r['idle'] / 2**20:.0f} "
            f"| {(r['peak'] - r['idle']) / n / 1024:.0f} | {1000 * r['cpu'] / r['requests']:.2f} "
            f"| {r['requests']} | {r['wall']:.1f} | {r['ok'] / r['wall']:.0f} | {n - r['ok']} |"
        )
    server = rows[0][1]
    print(f"\nserver peak / aiohttp floor peak: {server['peak'] / floor_peak:.2f}x; "
          f"torch mapped into the server: {server['torch']}")  # fmt: skip


if __name__ == "__main__":
    main()
