"""One HTTP POST of a signed webhook, with the guard rails a call into someone else's server needs.

- The URL is checked again here (`url_guard`): IP literals before the request, names in the
  resolver the connection is made with, so the checked address is the connected address.
- Redirects are not followed (a 3xx is a failed attempt: following one would let a public URL
  bounce the request to a private one, and the receiver should be configured with its real URL).
- Only a 2xx within the timeout counts; at most `body_cap` bytes of the response are read.
- No proxy from the environment (`trust_env=False`): the checked address must be the one called.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from services.http.url_guard import GuardedResolver, URLPolicy, URLRefused, check_literal
from services.settings import Settings

USER_AGENT = "offhours-webhooks/1"
# What is kept of a response body for the deliveries listing (the cap on what is read is separate).
KEPT_BODY_CHARS = 512


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    latency_ms: int
    response_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    # The URL guard refused the target: retrying cannot help until someone changes the URL or policy.
    refused: bool = False

    def attempt(self, number: int, started_at: float, next_retry_at: float | None) -> dict[str, Any]:
        return {
            "attempt": number,
            "started_at": round(started_at, 3),
            "outcome": "succeeded" if self.ok else "failed",
            "latency_ms": self.latency_ms,
            "response_code": self.response_code,
            "response_body": self.response_body,
            "error": self.error,
            "next_retry_at": None if next_retry_at is None else int(next_retry_at),
        }


class Sender:
    """A client session shared by all deliveries of a process (connection reuse per receiver)."""

    def __init__(self, policy: URLPolicy, *, timeout_s: float, body_cap: int) -> None:
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.body_cap = body_cap
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sender:
        return cls(
            URLPolicy.from_settings(settings),
            timeout_s=settings.webhook_timeout_seconds,
            body_cap=settings.webhook_response_body_cap_bytes,
        )

    async def start(self) -> Sender:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.policy),
                limit=0,  # concurrency is bounded by the notifier's pool, per endpoint and overall
                ttl_dns_cache=10,  # cached answers were checked when they were resolved
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, trust_env=False, headers={"User-Agent": USER_AGENT}
            )
        return self

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        assert self._session is not None, "Sender.start() first"
        started = time.perf_counter()

        def elapsed() -> int:
            return round((time.perf_counter() - started) * 1000)

        try:
            host = urlsplit(url).hostname or ""
            check_literal(host, self.policy)
            async with self._session.post(url, data=body, headers=dict(headers), allow_redirects=False) as resp:
                head = await _read_capped(resp, self.body_cap)
                code = resp.status
                kept = head[:KEPT_BODY_CHARS * 4].decode("utf-8", "replace")[:KEPT_BODY_CHARS] or None
                if 200 <= code < 300:
                    return SendResult(True, elapsed(), code, kept)
                if 300 <= code < 400:
                    where = resp.headers.get("Location", "")
                    error = f"redirect not followed (HTTP {code}{' to ' + where[:200] if where else ''})"
                else:
                    error = f"HTTP {code}"
                return SendResult(False, elapsed(), code, kept, error)
        except URLRefused as exc:
            return SendResult(False, elapsed(), error=f"refused: {exc}", refused=True)
        except TimeoutError:
            return SendResult(False, elapsed(), error=f"timed out after {self.timeout.total:g}s")
        except aiohttp.ClientConnectorDNSError as exc:
            return SendResult(False, elapsed(), error=f"DNS: could not resolve {exc.host}")
        except aiohttp.ClientError as exc:
            return SendResult(False, elapsed(), error=f"{type(exc).__name__}: {exc}"[:500])
        except (OSError, ValueError) as exc:  # e.g. an URL aiohttp cannot parse
            return SendResult(False, elapsed(), error=f"{type(exc).__name__}: {exc}"[:500])


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """At most `cap` bytes of the body. A longer body is not drained: the connection is dropped instead."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await resp.content.read(cap - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if not resp.content.at_eof():
        resp.close()  # do not return a half-read connection to the pool
    return b"".join(chunks)

