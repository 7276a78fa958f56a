"""``GET /v1/predictions/{id}/stream``: the prediction's Server-Sent Events
(``streams.py``). Opened with the owner's key, or with the signed query its
``urls.stream`` carries (a browser's EventSource sends no headers). ``?progress=1`` adds
``progress`` events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from repligate.api.deps import base_url, bearer_token, container
from repligate.links import LinkCheck
from repligate.records import Prediction
from repligate.storage.base import resolve_output
from repligate.streams import StreamState

router = APIRouter()

# Without news from the bus, a stream re-reads its prediction this often (another
# process may be running it) and sends a comment, which also keeps proxies from
# closing an idle connection.
POLL_SECONDS = 15.0


@router.get("/predictions/{prediction_id}/stream")
async def stream_prediction(prediction_id: str, request: Request) -> StreamingResponse:
    wired = container(request)
    service, hub = wired.service, wired.streams
    query = request.query_params
    if wired.links.check(prediction_id, query.get("expires"), query.get("sig")) is LinkCheck.VALID:
        await service.read(service.peek, prediction_id)
    else:
        await service.read(service.get_for_token, bearer_token(request), prediction_id)
    base = base_url(request)

    def resolve(output: Any) -> Any:
        return resolve_output(output, wired.storage, base)

    async def events() -> AsyncIterator[bytes]:
        state = StreamState(progress=query.get("progress", "").lower() in ("1", "true"))
        sent = 0
        # Subscribed before the prediction is read, so no change falls in between.
        snapshots = hub.subscribe(prediction_id)
        try:
            current: Prediction | None = await service.read(service.peek, prediction_id)
            while current is not None:
                for event in state.advance(current, resolve):
                    yield event.encode(sent)
                    sent += 1
                if state.done:
                    return
                try:
                    current = await asyncio.wait_for(snapshots.get(), POLL_SECONDS)
                except TimeoutError:
                    yield b": waiting\n\n"
                    current = await service.read(service.peek, prediction_id)
        finally:
            hub.unsubscribe(prediction_id, snapshots)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
