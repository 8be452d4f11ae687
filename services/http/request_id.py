"""A request id on every response (`x-request-id`), honouring a sane incoming one.

The id ties a client's report to the access log line and to any logged error. It is set in
`on_response_prepare`, not by the middleware on the way out, because streamed responses send
their headers from inside the handler.
"""

from __future__ import annotations

import re
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# Set once the response headers are on the wire: after that an error can only drop the connection.
RESPONSE_STARTED_KEY = web.RequestKey("response_started", bool)

# An incoming id is echoed into logs and headers, so accept only short, plain tokens.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request[REQUEST_ID_KEY] = incoming if _ACCEPTABLE.fullmatch(incoming) else new_request_id()
    return await handler(request)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request[RESPONSE_STARTED_KEY] = True
    rid = request.get(REQUEST_ID_KEY)
    if rid is None:  # aiohttp answered before any middleware ran (e.g. a malformed request line)
        rid = new_request_id()
        request[REQUEST_ID_KEY] = rid
    response.headers[REQUEST_ID_HEADER] = rid


def setup_request_id(app: web.Application) -> None:
    app.middlewares.append(request_id_middleware)
    app.on_response_prepare.append(on_response_prepare)
