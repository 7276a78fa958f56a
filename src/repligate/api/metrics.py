"""``GET /metrics``: the Prometheus exposition (``metrics.py``), guarded as
``REPLIGATE_METRICS`` says: ``open``, ``off`` (404, as if there were no such route), or
``token:SECRET`` (``Authorization: Bearer SECRET``; 401 otherwise)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from repligate.api.deps import bearer_token, container
from repligate.errors import AuthenticationError, NotFound

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # A plain def: the scrape reads the database, so it runs in the thread pool.
    wired = container(request)
    mode = wired.settings.metrics
    if mode == "off" or wired.metrics is None:
        raise NotFound()
    if mode.startswith("token:"):
        expected = mode.removeprefix("token:").encode()
        given = (bearer_token(request) or "").encode()
        if not hmac.compare_digest(given, expected):
            raise AuthenticationError("GET /metrics needs the metrics token as a bearer token.")
    body, content_type = wired.metrics.render()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
