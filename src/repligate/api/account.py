"""``GET /v1/account``: the caller, as Replicate describes an account. Here each API key
is an account, named by its key's name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from repligate.api.deps import CurrentKey
from repligate.api.limits import limit_reads

router = APIRouter()


@router.get("/account", dependencies=[Depends(limit_reads)])
async def get_account(key: CurrentKey) -> dict[str, Any]:
    return {
        "type": "user",
        "username": key.name,
        "name": key.name,
        "github_url": None,
        "avatar_url": None,
    }
