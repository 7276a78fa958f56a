"""The progress of a relayed prediction, from upstream's answer: its ``progress`` object
when upstream sends one (another repligate), else the last tqdm line of its logs, read
as the official client reads it (Replicate itself sends only the lines)."""

from __future__ import annotations

import re
from typing import Any

from repligate.records import RunProgress

# "  40%|████      | 2/5 [00:01<00:01, 1.9it/s]": percentage, bar, current/total.
_TQDM = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)", re.MULTILINE)


def upstream_progress(reply: dict[str, Any]) -> RunProgress | None:
    given = reply.get("progress")
    if isinstance(given, dict):
        try:
            return RunProgress.from_json(given)
        except (TypeError, ValueError, AttributeError):
            pass  # not the shape we send: fall back to the logs
    logs = reply.get("logs")
    if not isinstance(logs, str):
        return None
    matches = _TQDM.findall(logs)
    if not matches:
        return None
    _, current, total = matches[-1]
    return RunProgress(current=int(current), total=int(total))
