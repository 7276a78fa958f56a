"""``POST /relay/webhooks/{prediction_id}``: upstream Replicate's webhooks for a relayed
prediction, verified with Replicate's signature (Standard Webhooks, the account's
``whsec_`` secret). A verified body is folded in as a poll's answer would be; anything
unsigned or tampered with is refused and changes nothing."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response

from repligate.api.deps import container
from repligate.api.errors import problem

router = APIRouter()


@router.post("/relay/webhooks/{prediction_id}", include_in_schema=False)
async def upstream_webhook(prediction_id: str, request: Request) -> Response:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    wired = container(request)
    secret = wired.settings.upstream_webhook_secret
    if wired.relay is None or secret is None:
        return problem(404, "This server receives no upstream webhooks.")
    raw = await request.body()
    try:
        Webhook(secret.get_secret_value()).verify(raw, dict(request.headers))
        body = json.loads(raw)
    except (WebhookVerificationError, ValueError):
        return problem(401, "The webhook signature is not valid.")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return problem(422, "The webhook body is not a prediction.")
    wired.relay.deliver(prediction_id, body)
    return Response(status_code=204)
