"""``GET /v1/webhooks/default/secret``: the caller's webhook signing secret, as Replicate
serves it (``{"key": "whsec_..."}``); made on first use, one per key."""

from __future__ import annotations

from fastapi import APIRouter, Request

from repligate.api.deps import CurrentKey, container, in_thread

router = APIRouter()


@router.get("/webhooks/default/secret")
async def default_secret(request: Request, key: CurrentKey) -> dict[str, str]:
    deliverer = container(request).webhooks
    return {"key": await in_thread(deliverer.secret, key.id)}
