"""Pure parts of the delivery schedule: ids, backoff with full jitter, the retry horizon."""

from __future__ import annotations

import random

from services.notifier.deliveries import next_attempt_after_failure, retry_delay, webhook_event_id, webhook_id


def test_ids_are_deterministic_per_event_and_target() -> None:
    assert webhook_id("batch_1.completed", "whep_a") == webhook_id("batch_1.completed", "whep_a")
    assert webhook_id("batch_1.completed", "whep_a") != webhook_id("batch_1.completed", "whep_b")
    assert webhook_id("batch_1.completed", "whep_a") != webhook_id("batch_1.failed", "whep_a")
    assert webhook_id("x", "y").startswith("msg_") and len(webhook_id("x", "y")) == 36
    assert webhook_event_id("batch_1.completed") == webhook_event_id("batch_1.completed")
    assert webhook_event_id("batch_1.completed").startswith("evt_")


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(3600.0, 5.0 * 2 ** (attempt - 1))
        delays = [retry_delay(attempt, 5.0, 3600.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the whole range is used, not a fixed step
    assert retry_delay(10_000, 5.0, 3600.0, rng) <= 3600.0  # no overflow for absurd attempt counts


def test_the_horizon_ends_the_retries() -> None:
    rng = random.Random(1)
    now = 1000.0
    assert next_attempt_after_failure(now, 1, deadline=now + 10_000, base_s=5, cap_s=60, rng=rng) is not None
    assert next_attempt_after_failure(now, 1, deadline=now - 1, base_s=5, cap_s=60, rng=rng) is None
    # however the jitter falls, a retry is never scheduled past the deadline
    for attempt in range(1, 20):
        at = next_attempt_after_failure(now, attempt, deadline=now + 30, base_s=5, cap_s=60, rng=rng)
        assert at is None or now <= at <= now + 30
