"""``GET /health``: answers at once, without a key, even while a prediction runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from repligate import __version__
from repligate.api.deps import container

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {
        "status": "ok",
        "version": __version__,
        "models_loaded": container(request).provider.loaded(),
    }
