"""The admission order as pure functions: deficit round robin by lines, then priority and deadline
on top of it (services/dispatcher/admission.py). No servers."""

from __future__ import annotations

import itertools
from collections import Counter

from services.dispatcher.admission import DeficitRoundRobin, QueuedBatch, RateMeter, choose
from services.state.projects import batch_priority


def test_equal_weights_alternate_chunk_by_chunk() -> None:
    drr = DeficitRoundRobin()
    picks = [drr.choose({"a": 1000, "b": 1000}, {}) for _ in range(10)]
    assert Counter(picks) == {"a": 5, "b": 5}
    assert all(x != y for x, y in itertools.pairwise(picks))


def test_weights_share_lines_two_to_one() -> None:
    drr = DeficitRoundRobin()
    picks = Counter(drr.choose({"a": 1000, "b": 1000}, {"a": 2.0, "b": 1.0}) for _ in range(300))
    assert picks == {"a": 200, "b": 100}


def test_shares_are_by_lines_not_by_chunks() -> None:
    # b's chunks are a quarter of a's: it takes four chunks per chunk of a, the same lines.
    drr = DeficitRoundRobin()
    lines: Counter[str] = Counter()
    for _ in range(500):
        p = drr.choose({"a": 1000, "b": 250}, {})
        lines[p] += 1000 if p == "a" else 250
    assert abs(lines["a"] - lines["b"]) <= 1000


def test_a_newcomer_is_served_at_the_next_turn_and_an_idle_project_banks_nothing() -> None:
    drr = DeficitRoundRobin()
    for _ in range(50):
        assert drr.choose({"big": 1000}, {}) == "big"
    assert drr.choose({"big": 1000, "small": 20}, {}) == "small"  # no waiting behind big's history
    # small leaves; when it comes back it has no credit saved from its absence.
    for _ in range(10):
        drr.choose({"big": 1000}, {})
    assert "small" not in drr.deficit
    picks = [drr.choose({"big": 1000, "small": 1000}, {}) for _ in range(4)]
    assert Counter(picks) == {"big": 2, "small": 2}


def batch(batch_id: str, project: str, *, chunks: int = 3, lines: int = 100, rank: int = 1,
          created: float = 0.0, deadline: float = float("inf")) -> QueuedBatch:
    q = QueuedBatch(batch_id=batch_id, project=project, model="m", rank=rank, created_at=created,
                    deadline=deadline, doc={})
    for i in range(chunks):
        q.push(i, lines)
    return q


def drain(batches: list[QueuedBatch], *, now: float = 0.0, backlog: float | None = None,
          weights: dict[str, float] | None = None) -> list[str]:
    drr: dict[int, DeficitRoundRobin] = {}
    order = []
    while (b := choose(batches, now=now, backlog_seconds=backlog, safety=1.5, drr=drr, weights=weights or {})):
        b.pop()
        order.append(b.batch_id)
    return order


def test_priority_class_first_then_fair_share_then_submission_order() -> None:
    order = drain([
        batch("a1", "pa", created=1), batch("a2", "pa", created=2), batch("b", "pb", created=3),
        batch("low", "pc", rank=2, created=0), batch("high", "pd", rank=0, created=9),
    ])
    assert order[:3] == ["high"] * 3
    assert order[-3:] == ["low"] * 3
    normal = order[3:-3]
    # pa and pb alternate; within pa, a1 (submitted first) before a2.
    assert normal[:6] == ["a1", "b", "a1", "b", "a1", "b"]
    assert normal[6:] == ["a2"] * 3


def test_a_batch_at_risk_goes_first_by_deadline() -> None:
    # The backlog takes 100 s; a batch due in 120 s is at risk (120 <= 1.5 x 100), one due in 1 h is not.
    big = batch("big", "pa", created=1, deadline=3600)
    due_late = batch("late", "pb", created=2, deadline=140)
    due_soon = batch("soon", "pc", created=3, deadline=120)
    order = drain([big, due_late, due_soon], backlog=100.0)
    assert order[:6] == ["soon"] * 3 + ["late"] * 3
    # Unknown rate (nothing measured yet): no deadline ordering, fair share only.
    order = drain([batch("big", "pa", created=1, deadline=3600), batch("soon", "pc", created=3, deadline=120)])
    assert order[:2] == ["big", "soon"]


def test_a_batch_priority_is_capped_by_its_project() -> None:
    assert batch_priority({"priority": "high"}, "normal") == "normal"
    assert batch_priority({"priority": "high"}, "high") == "high"
    assert batch_priority({"priority": "low"}, "normal") == "low"
    assert batch_priority({}, "high") == "normal"
    assert batch_priority({"priority": "urgent!"}, "high") == "normal"
    assert batch_priority(None, "low") == "low"


def test_the_rate_meter_measures_lines_per_second() -> None:
    meter = RateMeter(window_s=60)
    assert meter.rate() is None
    for t in range(11):
        meter.add(100, now=1000.0 + t)
    assert meter.rate() == 100.0
    meter.add(100, now=2000.0)  # the old ones age out
    assert meter.rate() is None
