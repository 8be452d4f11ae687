"""OpenAI-shaped errors for every service: one exception type and one middleware.

Handlers raise `APIError` (usually through the helpers below) for anything the client did
wrong; the middleware turns it, aiohttp's own HTTP exceptions (unknown route, wrong method,
body too large) and any unexpected exception into `{"error": {"message", "type", "param",
"code"}}` with the right status. A client never sees a stack trace: unexpected exceptions are
logged with theirs and answered 500 with the request id, so the log line can be found.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from schemas.errors import error_body
from services.http.request_id import REQUEST_ID_KEY, RESPONSE_STARTED_KEY

log = logging.getLogger(__name__)

# The `type` values OpenAI uses (it answers 401 and 404 as invalid_request_error too); the SDK
# picks its exception class by status, not by type.
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error the API answers with its status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> web.Response:
        return json_error(self.status, self.body(), self.headers)


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    # OpenAI answers a missing (or foreign) object with type invalid_request_error and status 404.
    return APIError(404, message, param=param, code=code)


def unauthorized(message: str, *, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def too_large(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(413, message, param=param, code=code)


def unavailable(message: str, *, code: str | None = None) -> APIError:
    return APIError(503, message, type=SERVER_ERROR, code=code)


def json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


# Codes for aiohttp's own exceptions (unknown route, wrong method, body too large), which carry none.
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "unknown_url",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    if status == 404:
        message = f"Invalid URL ({request.method} {request.path})"
    elif status == 405:
        allowed = getattr(exc, "allowed_methods", None) or ()
        message = f"Method {request.method} is not allowed on {request.path}"
        if allowed:
            message += f" (allowed: {', '.join(sorted(allowed))})"
    elif status == 413:
        message = f"Request body is too large ({exc.text or exc.reason})"
    else:
        message = exc.text if exc.text and not exc.text.startswith(f"{status}:") else exc.reason
    type_ = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
    return json_error(status, error_body(message, type=type_, code=_HTTP_CODES.get(status)), headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        if request.get(RESPONSE_STARTED_KEY):
            raise  # headers are out; aiohttp drops the connection, Content-Length tells the client
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return _from_http_exception(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away; nothing to answer
    except Exception:
        request_id = request.get(REQUEST_ID_KEY, "-")
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        if request.get(RESPONSE_STARTED_KEY):
            raise
        return json_error(
            500,
            error_body(
                f"The server had an error while processing your request (request id {request_id}).",
                type=SERVER_ERROR,
            ),
        )
