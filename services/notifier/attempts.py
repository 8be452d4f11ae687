"""One attempt of one delivery: resolve where it goes and how it is signed, send it, say what comes next.

The URL and secrets are read when sending, not when the event arrived: an endpoint disabled,
deleted or rotated since then is honoured by its next attempt. A poll's first attempts and the
scheduler's retries both send through `Attempts.attempt`, so they count and back off alike.

A delivery is sent only under a claim: a token written into its document with a lease. Two
notifiers never send the same attempt at once, a result is recorded only while its claim holds,
and a crashed notifier's deliveries are claimed again when their leases lapse.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pymongo import UpdateOne

from services.notifier.deliveries import DeliveryStore, finish_update, next_attempt_after_failure
from services.notifier.endpoints import EndpointStore, active_secrets, callback_owner
from services.notifier.metrics import NotifierMetrics
from services.notifier.pool import receiving_host
from services.notifier.secrets import SecretBox, SecretKeyError
from services.notifier.sender import Sender, SendResult
from services.notifier.signing import webhook_headers
from services.settings import Settings

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    attempt: dict[str, Any]  # the attempt record kept in the delivery
    next_at: float | None  # when to try again; None: delivered, or dead
    finished: float


class Claims:
    """This process's claim tokens, and how long a claim holds."""

    def __init__(self, settings: Settings, instance: str | None = None) -> None:
        # A claim must outlast one attempt and the writing of its result, with margin (it is renewed
        # before sending when it ran short while waiting for a slot). It is also how long a crashed
        # notifier's in-flight deliveries wait before another notifier takes them.
        self.lease_s = 2 * settings.webhook_timeout_seconds + 60.0
        self._instance = instance or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._numbers = itertools.count()

    def token(self) -> str:
        return f"{self._instance}:{next(self._numbers)}"


@dataclass(eq=False)
class Attempts:
    """One attempt of a delivery: resolve its target now, sign, send, count, and set the next retry."""

    settings: Settings
    endpoints: EndpointStore
    deliveries: DeliveryStore
    box: SecretBox
    sender: Sender
    claims: Claims
    metrics: NotifierMetrics
    # The scheduler's alarm: a retry this process set comes due without waiting for a poll.
    on_retry: Callable[[float], None]

    async def attempt(self, doc: Mapping[str, Any], endpoint: Mapping[str, Any] | None) -> Outcome:
        """Send once, and count it. `endpoint`: the endpoint document when the caller has it fresh."""
        number = int(doc.get("attempt_count") or 0) + 1
        started = time.time()
        result = await self._send(doc, endpoint)
        finished = time.time()
        self.metrics.attempts.labels("succeeded" if result.ok else "failed").inc()
        self.metrics.attempt_seconds.observe(result.latency_ms / 1000)
        next_at: float | None = None
        if not result.ok and not result.refused:
            next_at = next_attempt_after_failure(
                finished, number, float(doc["deadline"]),
                self.settings.webhook_retry_base_seconds, self.settings.webhook_retry_max_delay_seconds,
            )
        if result.ok:
            self.metrics.finished.labels("delivered").inc()
            self.metrics.delivery_seconds.observe(max(0.0, finished - float(doc["created_at"])))
        elif next_at is None:
            self.metrics.finished.labels("dead").inc()
            log.warning("delivery %s (%s) is dead after %d attempts: %s", doc["_id"], doc["event_type"], number,
                        result.error)
        else:
            self.on_retry(next_at)
        return Outcome(result.attempt(number, started, next_at), next_at, finished)

    async def host_of(self, doc: Mapping[str, Any]) -> str | None:
        """The receiving host of a delivery now (its endpoint's URL may have changed since the event), which
        bounds its concurrency with every other delivery to that host; None when it has no URL any more."""
        if doc.get("endpoint_id") is None:
            return receiving_host(doc["callback_url"])
        endpoint = await self.endpoints.get_any(doc["endpoint_id"])
        return receiving_host(endpoint["url"]) if endpoint is not None else None

    async def claimed(self, doc: Mapping[str, Any], claim: str) -> UpdateOne | None:
        """An attempt of a delivery claimed in MongoDB (a retry, the overflow, a lapsed claim), and the
        write that records it; None when the claim was lost before sending (then its new holder sends)."""
        now = time.time()
        # A claim that ran short while waiting for a slot is renewed first, or lost to whoever claimed
        # the delivery since.
        running_short = doc["lease_until"] - now < self.settings.webhook_timeout_seconds + 5.0
        if running_short and not await self.deliveries.renew_claim(doc["_id"], claim, now + self.claims.lease_s):
            return None
        attempt, next_at, finished = await self.attempt(doc, None)
        return finish_update(doc, claim, attempt, next_at=next_at, now=finished)

    async def _send(self, doc: Mapping[str, Any], endpoint: Mapping[str, Any] | None) -> SendResult:
        try:
            if doc.get("endpoint_id") is not None:
                ep = endpoint or await self.endpoints.get_any(doc["endpoint_id"])
                if ep is None:
                    return SendResult(False, 0, error="the endpoint was deleted", refused=True)
                if not ep.get("enabled", True):
                    return SendResult(False, 0, error="the endpoint is disabled", refused=True)
                url, secrets = ep["url"], active_secrets(self.box, ep, ep["_id"])
            else:
                url = doc["callback_url"]
                secret_doc = await self.endpoints.callback_secret_doc(doc["project"])
                secrets = active_secrets(self.box, secret_doc, callback_owner(doc["project"]))
        except SecretKeyError as exc:
            return SendResult(False, 0, error=f"cannot sign: {exc}")
        body = doc["body"].encode()
        return await self.sender.send(url, body, webhook_headers(doc["_id"], body, secrets))
