"""The notifier's Prometheus metrics, in one place because intake, attempts and the pool all count."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter("offhours_notifier_events", "Batch events consumed, by type.", ("type",),
                              registry=registry)
        self.deliveries_created = Counter("offhours_notifier_deliveries_created",
                                          "Delivery documents created (one per event and target).", registry=registry)
        self.attempts = Counter("offhours_notifier_attempts", "Delivery attempts, by outcome.", ("outcome",),
                                registry=registry)
        self.finished = Counter("offhours_notifier_deliveries_finished", "Deliveries that reached a final status.",
                                ("status",), registry=registry)
        self.attempt_seconds = Histogram("offhours_notifier_attempt_seconds", "Duration of one HTTP attempt.",
                                         registry=registry,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.delivery_seconds = Histogram("offhours_notifier_delivery_seconds",
                                          "From delivery creation to the successful attempt.", registry=registry,
                                          buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400))
        self.commit_failures = Counter("offhours_notifier_commit_failures",
                                       "Offset commits that failed (a rebalance, the broker away); the records "
                                       "are admitted again by whoever owns their partition next.", registry=registry)
        self.in_pool = Gauge("offhours_notifier_deliveries_in_memory",
                             "Deliveries waiting for or holding a send slot in this process.", registry=registry)
