"""`mesh_instance_info{service,version,track} 1`: what an instance's `/metrics` says it runs.

A release compares its subsets from the instances' metrics; the release controller
knows each instance's track from the registry, but a Prometheus scrape (or a person
reading `/metrics`) should see it too, the usual Prometheus "info" pattern: join on
the instance's labels to break any series down by version or track.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Gauge

_GAUGES: WeakKeyDictionary[CollectorRegistry, Gauge] = WeakKeyDictionary()


def instance_info(registry: CollectorRegistry, service: str, version: str, track: str) -> None:
    """Set the info series for one served service (several per process are fine)."""
    gauge = _GAUGES.get(registry)
    if gauge is None:
        gauge = Gauge(
            "mesh_instance_info",
            "This instance's service, version and track (traffic subset); always 1.",
            ["service", "version", "track"],
            registry=registry,
        )
        _GAUGES[registry] = gauge
    gauge.labels(service, version, track).set(1)
