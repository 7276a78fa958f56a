"""``GET /ready``: 200 when the database, storage and (when configured) the broker and
event bus answer, 503 otherwise; no key needed, like ``/health``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from repligate import readiness
from repligate.api.deps import container

router = APIRouter()


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    services = container(request)
    checks: dict[str, readiness.Check] = {
        "database": readiness.database_check(services.engine),
        "storage": readiness.storage_check(services.storage),
    }
    for name, component in (("broker", services.queue), ("bus", services.bus)):
        check = readiness.optional_check(component)
        if check is not None:
            checks[name] = check
    report = await readiness.run_checks(checks)
    body: dict[str, Any] = {
        "status": "ready" if report.ready else "unavailable",
        "checks": report.checks,
        "pid": os.getpid(),
    }
    return JSONResponse(body, status_code=200 if report.ready else 503)
