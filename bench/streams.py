"""What open event streams cost the server: threads, memory, and how long one event
takes to reach every open stream. Prints a table, never passes or fails.

    python bench/streams.py                 # 1, 100 and 1000 streams
    python bench/streams.py --counts 1 10 100 1000 2000

One repligate app (scripted provider: no model runs) served by uvicorn on loopback in
this process, so its threads can be counted; the clients are aiohttp coroutines in a
second process (they would otherwise share the event loop's CPU accounting). For each
count N: a prediction held at a gate, N streams opened on it (each waits for its first
event), then the gate opens and the time until every stream has seen ``done`` is the
fan-out time. Threads and resident memory are read while the N streams are open.
Ratios are against the 1-stream row of the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENT = r"""
import asyncio, json, sys, time
import aiohttp

async def one(session, url, opened):
    async with session.get(url) as response:
        first = True
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("event:") and first:
                first = False
                opened.release()
            if line == "event: done":
                return time.monotonic()

async def main(url, count):
    opened = asyncio.Semaphore(0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(one(session, url, opened)) for _ in range(count)]
        for _ in range(count):
            await opened.acquire()
        print("open", flush=True)
        sys.stdin.readline()  # the gate opens
        start = time.monotonic()
        ends = await asyncio.gather(*tasks)
        print(json.dumps(max(ends) - start), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 100, 1000])
    args = parser.parse_args()

    import httpx

    from repligate.app import build_container, create_app
    from repligate.events import Log
    from repligate.settings import Settings
    from repligate.testing.fakes import Gate, ScriptedProvider
    from repligate.testing.live_server import LiveServer

    rows = []
    with tempfile.TemporaryDirectory() as data:
        gates: list[Gate] = []
        provider = ScriptedProvider()
        settings = Settings(data_dir=Path(data), log_flush_interval=0.0, webhook_workers=0)
        with LiveServer(
            create_app(settings, build_container(settings, provider=provider))
        ) as server:
            auth = {"Authorization": f"Bearer {server.make_token()}"}
            for count in args.counts:
                gate = Gate()
                gates.append(gate)
                provider.script = [Log("waiting"), gate]
                created = httpx.post(
                    f"{server.url}/v1/models/stability-ai/stable-diffusion/predictions",
                    json={"input": {"prompt": "x"}},
                    headers=auth,
                ).json()
                threads_before = threading.active_count()
                client = subprocess.Popen(
                    [sys.executable, "-c", CLIENT, created["urls"]["stream"], str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert client.stdout is not None and client.stdin is not None
                assert client.stdout.readline().strip() == "open"
                threads_open = threading.active_count()
                memory = rss_mib()
                gate.open()
                client.stdin.write("go\n")
                client.stdin.flush()
                fan_out = json.loads(client.stdout.readline())
                client.wait(60)
                rows.append((count, threads_open - threads_before, memory, fan_out))
                time.sleep(0.2)
    base = rows[0]
    print(f"{'streams':>8} {'+threads':>9} {'RSS MiB':>8} {'fan-out ms':>11} {'fan-out ratio':>14}")
    for count, threads, memory, fan_out in rows:
        print(
            f"{count:>8} {threads:>9} {memory:>8.1f} {fan_out * 1000:>11.1f}"
            f" {fan_out / base[3]:>14.1f}"
        )


if __name__ == "__main__":
    main()
