"""Which failed batch lines are worth sending again: the one rule the service's
`POST /v1/batches/{id}/retry` and `offhours run-batch --retry-failed` both apply.

A line is retriable when it did not finish for a reason of its moment, not of the request: the
batch was cancelled or expired first, the engine was down or failed, or the engine (an upstream
server) answered "busy" or "broken right now" (408, 429, any 5xx). A request the validator or the
model refused (any other error code, any other 4xx) would fail the same way again, so it is not.
"""

from __future__ import annotations

from typing import Any

# Error codes of lines that never got an answer of their own.
RETRIABLE_CODES: frozenset[str] = frozenset({"batch_cancelled", "batch_expired", "engine_unavailable", "engine_error"})
# Answers that say "busy" or "timed out" rather than "bad request"; every 5xx is retriable too.
RETRIABLE_STATUSES: frozenset[int] = frozenset({408, 429})


def is_retriable(error: Any, response: Any) -> bool:
    """Whether a failed line (its `error` and `response` objects) may turn out otherwise if sent again."""
    if isinstance(error, dict) and error.get("code") in RETRIABLE_CODES:
        return True
    status = response.get("status_code") if isinstance(response, dict) else None
    return type(status) is int and (status in RETRIABLE_STATUSES or status >= 500)
