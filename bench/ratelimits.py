"""What the per-key rate limits cost a request: prints a table, never passes or fails.

    python bench/ratelimits.py                   # 5 rounds of 2,000 GETs per variant
    python bench/ratelimits.py --rounds 9 --requests 5000

One app on the fakes (scripted provider, SQLite, local files), driven in process through
httpx's ASGI transport (no sockets, no load generator to share the cores with), answers
``GET /v1/predictions/<id>`` for one finished prediction under three settings, round by
round in rotating order so drift cancels:

- no limiter: the app without one (the request as it was before limits);
- off: read limit ``none`` (the key's limits still looked up, nothing counted);
- memory: the moving window in this process's memory, a limit never reached;
- the limiter's ``hit`` alone, without the request around it.

Reported: microseconds per request (median over rounds) and the ratio to "no limiter". The
Redis storage needs the redis client package; without it that row says so.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from repligate.app import build_container, create_app
from repligate.records import KeyLimits
from repligate.settings import Settings
from repligate.store import keys, migrate
from repligate.testing.fakes import FakeClock, ManualQueue, ScriptedProvider

NEVER = "1000000000/minute"


async def time_gets(read_limit: str | None, root: Path, requests: int) -> float:
    """Seconds per GET of one finished prediction, with this read limit."""
    name = (read_limit or "no-limiter").replace("/", "-")
    settings = Settings(data_dir=root / name, read_rate_limit=read_limit or "none")
    container = build_container(
        settings,
        provider=ScriptedProvider(returns="done"),
        queue=ManualQueue.factory(inline=True),
        clock=FakeClock(),
    )
    if read_limit is None:
        container.limiter = None
    migrate.upgrade(container.engine)
    with container.sessions() as session:
        _, token = keys.create(session, name="bench")
    app = create_app(settings, container)
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        created = await client.post(
            "/v1/models/stability-ai/stable-diffusion/predictions",
            json={"input": {"prompt": "a fox"}},
            headers=headers,
        )
        path = f"/v1/predictions/{created.json()['id']}"
        for _ in range(50):  # warm: caches, the kept connection
            assert (await client.get(path, headers=headers)).status_code == 200
        start = time.perf_counter()
        for _ in range(requests):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, response.text
        elapsed = time.perf_counter() - start
    container.service.close()
    container.engine.dispose()
    return elapsed / requests


async def time_hits(requests: int) -> float:
    from repligate.ratelimit import KeyLimiter

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        container = build_container(settings, clock=FakeClock())
        limiter = KeyLimiter(sessions=container.sessions, clock=FakeClock(), read_default=NEVER)
        limits = KeyLimits(api_key_id="key_bench")
        start = time.perf_counter()
        for _ in range(requests):
            await limiter.hit("read", limits)
        elapsed = time.perf_counter() - start
        container.engine.dispose()
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    variants = ["no limiter", "off", "memory", "hit alone"]
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            order = variants[index % 4 :] + variants[: index % 4]
            for variant in order:
                root = Path(tmp, f"round{index}")
                if variant == "no limiter":
                    seconds = asyncio.run(time_gets(None, root, args.requests))
                elif variant == "off":
                    seconds = asyncio.run(time_gets("none", root, args.requests))
                elif variant == "memory":
                    seconds = asyncio.run(time_gets(NEVER, root, args.requests))
                else:
                    seconds = asyncio.run(time_hits(args.requests))
                results[variant].append(seconds * 1e6)
    off = statistics.median(results["no limiter"])
    print(f"GET /v1/predictions/<id>, {args.rounds} rounds x {args.requests} requests")
    print(f"{'variant':<12} {'us/request':>11} {'ratio':>7}  (min-max us)")
    for variant, values in results.items():
        median = statistics.median(values)
        print(
            f"{variant:<12} {median:>11.1f} {median / off:>7.3f}  "
            f"({min(values):.1f}-{max(values):.1f})"
        )
    try:
        import redis  # noqa: F401

        print("redis: the client is installed; run the Redis test (tests/test_rate_limits.py)")
    except ImportError:
        print("redis: not measured (the redis client package is not installed)")


if __name__ == "__main__":
    main()
