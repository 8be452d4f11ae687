"""Reading a Server-Sent Events stream the way a browser does (the console's `/console/events`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass(frozen=True)
class ServerEvent:
    event: str
    data: Any
    id: str | None


async def server_events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerEvent]:
    """The events of an open `text/event-stream` response, in order; comments are skipped."""
    event, data, event_id = "message", [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield ServerEvent(event, orjson.loads("\n".join(data)), event_id)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
