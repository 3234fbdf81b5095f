"""Prometheus metrics of the saga runner, in a registry the service passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SagaMetrics:
    """Every saga metric; labels: `saga` (definition name), and `step`/`phase` for retries."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("saga_started_total", "Sagas started.", ["saga"], registry=registry)
        self.completed = Counter(
            "saga_completed_total", "Sagas that completed every step.", ["saga"], registry=registry
        )
        self.compensated = Counter(
            "saga_compensated_total",
            "Sagas that failed and were fully compensated.",
            ["saga"],
            registry=registry,
        )
        self.parked_total = Counter(
            "saga_parked_total",
            "Sagas parked because a compensation kept failing (alert on increase).",
            ["saga"],
            registry=registry,
        )
        self.parked = Gauge(
            "saga_parked_current",
            "Sagas currently parked in this service's database (refreshed by recover()).",
            ["saga"],
            registry=registry,
        )
        self.recovered = Counter(
            "saga_recovered_total",
            "Unfinished sagas resumed by recover() (after a crash or a lease expiry).",
            ["saga"],
            registry=registry,
        )
        self.step_retries = Counter(
            "saga_step_retries_total",
            "Retries of a step action (transient errors) or compensation.",
            ["saga", "step", "phase"],
            registry=registry,
        )
