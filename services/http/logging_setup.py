"""One logging configuration for every offhours process: JSON lines on stderr (or plain text).

`configure_logging(settings)` is called once by each command; `JsonAccessLogger` is the aiohttp
access logger, so every request becomes one structured line with its request id, route, status,
duration and project. Fields passed as `extra={...}` to any logger call become JSON keys.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from services.http.auth import PROJECT_KEY
from services.http.request_id import REQUEST_ID_KEY
from services.settings import Settings

ACCESS_LOGGER = "offhours.access"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal; extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Replace the root logger's handlers with one stderr handler at `settings.log_level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # aiohttp's own access logger would duplicate ours; its server errors stay.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for noisy in ("botocore", "aiobotocore", "aioboto3", "pymongo", "aiokafka", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing one structured record per request (pass as access_log_class)."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logging.getLogger(ACCESS_LOGGER), log_format)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        route = getattr(getattr(match_info, "route", None), "resource", None)
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": request.get(REQUEST_ID_KEY),
                "method": request.method,
                "path": request.path,
                "route": route.canonical if route is not None else None,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "bytes_sent": response.body_length,
                "bytes_received": request.content_length,
                "project": request.get(PROJECT_KEY),
                "remote": request.remote,
                "user_agent": request.headers.get("User-Agent"),
            },
        )
