"""Prometheus metrics of the receiver (prometheus-client), one registry per app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.protocol import ACCEPTED_ACTIONS

#: ``labelloop_webhook_events_total`` outcomes that refuse a webhook (alert ``LabelloopWebhooksRefused``).
REFUSED_OUTCOMES = ("rejected", "unavailable", "unknown project")


class Metrics:
    """The receiver's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "labelloop_webhook_events_total",
            "Webhook events by action and outcome (accepted, duplicate, ignored, rejected).",
            ["action", "outcome"],
            registry=registry,
        )
        self.enqueue_seconds = Histogram(
            "labelloop_webhook_enqueue_seconds",
            "Seconds to record a webhook event in Redis and enqueue it.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.predict_seconds = Histogram(
            "labelloop_predict_seconds",
            "Seconds to answer /predict, worker time included.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
            registry=registry,
        )
        self.auth_failures = Counter(
            "labelloop_auth_failures_total",
            "Requests refused for missing or wrong credentials, by route and kind (basic, secret).",
            ["route", "kind"],
            registry=registry,
        )
        self.refused_busy = Counter(
            "labelloop_requests_refused_busy_total",
            "Requests answered 503 beyond LABELLOOP_MAX_CONCURRENT_REQUESTS in flight, by route (webhook, other).",
            ["route"],
            registry=registry,
        )
        self.webhooks_refused_unread = Counter(
            "labelloop_webhooks_refused_unread_total",
            "Webhooks with a valid credential (or none configured) refused before their body was read, by reason: busy "
            "(503 beyond LABELLOOP_MAX_CONCURRENT_REQUESTS), host (400, Host not allowed), body (408, 413, 415, 422).",
            ["reason"],
            registry=registry,
        )
        self.served_version = Gauge(
            "labelloop_served_version_info",
            "1 for the model version each project serves.",
            ["project_id", "version"],
            registry=registry,
        )
        self.served_map50 = Gauge(
            "labelloop_served_map50",
            "mAP50 (fraction) of the model version each project serves, on its validation split.",
            ["project_id"],
            registry=registry,
        )
        self.preannotation_waiting = Gauge(
            "labelloop_preannotation_waiting_tasks",
            "Unlabeled tasks the running pre-annotation of each project has still to predict (0 when none runs).",
            ["project_id"],
            registry=registry,
        )
        self.project_webhook_ok = Gauge(
            "labelloop_project_webhook_ok",
            "1 when each project's webhook to labelloop was found working (or re-armed) at the last reconciliation, "
            "0 when missing, switched off or failing (labelloop.events.project_webhook).",
            ["project_id"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "labelloop_queue_depth", "Messages waiting in each Celery queue.", ["queue"], registry=registry
        )

        self.redis_used_memory = Gauge(
            "labelloop_redis_used_memory_bytes", "Memory Redis uses (INFO memory used_memory).", registry=registry
        )
        self.redis_maxmemory = Gauge(
            "labelloop_redis_maxmemory_bytes",
            "Redis' maxmemory (0: no limit). With noeviction, Redis refuses writes past it and webhooks get 503: "
            "alert when used memory nears it.",
            registry=registry,
        )

        self._event_series: dict[tuple[str, str], Any] = {}
        self._zero_refusals()

    def _zero_refusals(self) -> None:
        """The webhook refusals an alert counts, at 0 from the start: ``increase()`` sees the first
        of each (a series that appears with its first increment has no earlier sample to rise from)."""
        pairs = [(action, outcome) for action in sorted(ACCEPTED_ACTIONS) for outcome in REFUSED_OUTCOMES]
        for action, outcome in [*pairs, ("(none)", "rejected")]:
            self._event_series[(action, outcome)] = self.events.labels(action=action, outcome=outcome)
        for reason in ("busy", "host", "body"):
            self.webhooks_refused_unread.labels(reason=reason)

    def count_event(self, action: str, outcome: str) -> None:
        """Count one webhook event; the labelled series is looked up once per (action, outcome)."""
        series = self._event_series.get((action, outcome))
        if series is None:
            series = self._event_series[(action, outcome)] = self.events.labels(action=action, outcome=outcome)
        series.inc()

    def set_served_versions(self, versions: dict[int, str]) -> None:
        """Replace the served-version series with ``project_id -> version``."""
        self.served_version.clear()
        for project_id, version in versions.items():
            self.served_version.labels(project_id=str(project_id), version=version).set(1)

    def set_served_map50(self, values: dict[int, float]) -> None:
        """Replace the served-mAP50 series with ``project_id -> mAP50``."""
        self.served_map50.clear()
        for project_id, value in values.items():
            self.served_map50.labels(project_id=str(project_id)).set(value)

    def set_preannotation_waiting(self, waiting: dict[int, int]) -> None:
        """Replace the waiting-tasks series with ``project_id -> tasks``."""
        self.preannotation_waiting.clear()
        for project_id, tasks in waiting.items():
            self.preannotation_waiting.labels(project_id=str(project_id)).set(tasks)

    def set_project_webhooks_ok(self, ok: dict[int, bool]) -> None:
        """Replace the project-webhook series with ``project_id -> ok``."""
        self.project_webhook_ok.clear()
        for project_id, value in ok.items():
            self.project_webhook_ok.labels(project_id=str(project_id)).set(1 if value else 0)

    def set_queue_depths(self, depths: dict[str, int]) -> None:
        for queue, depth in depths.items():
            self.queue_depth.labels(queue=queue).set(depth)
