"""The relay to Replicate: models routed to ``replicate`` run upstream, through one
asyncio loop in its own thread (never the local workers' threads).

- ``routes``: which models run where (local / replicate / auto).
- ``keypool``: the upstream keys, their limits and their health.
- ``upstream``: the HTTP client (aiohttp) with retries and key failover.
- ``outputs``: upstream output files copied into this server's storage.
- ``tracker``: one relayed prediction, from upstream create to its end.
- ``scheduler``: the loop and its thread; submit, cancel, resume after a restart.
- ``webhooks``: upstream webhooks, verified with Replicate's signature.
"""
