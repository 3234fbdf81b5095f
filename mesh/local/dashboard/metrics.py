"""What the dashboard reads from an instance's `/metrics`, and the per-method figures.

The text is parsed with `prometheus_client.parser` (the exposition format's
own parser, not line matching). Rates and the error share come from the
difference of two scrapes (counters only grow; a restarted instance's smaller
counter counts from zero). Quantiles come from the histogram's buckets over
the same interval, interpolated linearly inside a bucket as Prometheus'
`histogram_quantile` does; with no call in the interval they are over the
instance's whole life, and marked so.

Errors are the server faults (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE, DATA_LOSS), the same codes that make a server span an
error: a NOT_FOUND or INVALID_ARGUMENT is the caller's, not the service's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

SERVER_FAULTS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}

MethodKey = tuple[str, str]  # (grpc_service, grpc_method)


@dataclass
class Scrape:
    """One instance's metrics at one moment (monotonic seconds)."""

    at: float
    handled: dict[tuple[str, str, str], float] = field(default_factory=dict)  # + grpc_code
    buckets: dict[MethodKey, dict[float, float]] = field(default_factory=dict)  # le -> count
    breakers: list[tuple[str, str, str]] = field(default_factory=list)  # target, method, state
    ejections: dict[str, float] = field(default_factory=dict)  # instance id -> times ejected


def parse_scrape(text: str, at: float) -> Scrape:
    """The series the dashboard shows, from one `/metrics` body."""
    out = Scrape(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "grpc_server_handled_total":
                key = (labels["grpc_service"], labels["grpc_method"], labels["grpc_code"])
                out.handled[key] = s.value
            elif s.name == "grpc_server_handling_seconds_bucket":
                method = (labels["grpc_service"], labels["grpc_method"])
                out.buckets.setdefault(method, {})[float(labels["le"])] = s.value
            elif s.name == "mesh_breaker_state":
                state = BREAKER_STATES.get(int(s.value), str(s.value))
                out.breakers.append((labels["service"], labels["method"], state))
            elif s.name == "mesh_client_ejections_total":
                out.ejections[labels["instance"]] = (
                    out.ejections.get(labels["instance"], 0.0) + s.value
                )
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile (seconds) of cumulative `le` buckets; None without observations."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound
            span = count - lower_count
            share = (rank - lower_count) / span if span > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True, slots=True)
class MethodStats:
    service: str
    grpc_service: str
    method: str
    calls: float  # since start, all instances
    rate: float | None  # calls/s over the last interval; None: no previous scrape
    error_rate: float | None  # share of server faults over the interval
    p50_ms: float | None
    p99_ms: float | None
    lifetime_quantiles: bool  # no call in the interval: p50/p99 over the whole life


def _delta(cur: float, prev: float | None) -> float:
    if prev is None or cur < prev:  # new series, or the instance restarted
        return cur
    return cur - prev


def method_stats(service: str, pairs: Iterable[tuple[Scrape, Scrape | None]]) -> list[MethodStats]:
    """Per-method figures of one service from (current, previous) scrapes of its instances."""
    calls: dict[MethodKey, float] = {}
    window: dict[MethodKey, float] = {}
    faults: dict[MethodKey, float] = {}
    life_b: dict[MethodKey, dict[float, float]] = {}
    win_b: dict[MethodKey, dict[float, float]] = {}
    seconds: list[float] = []
    have_prev = True
    for cur, prev in pairs:
        if prev is None:
            have_prev = False
        else:
            seconds.append(max(cur.at - prev.at, 1e-9))
        for (gs, gm, code), value in cur.handled.items():
            key = (gs, gm)
            d = _delta(value, prev.handled.get((gs, gm, code)) if prev else None)
            calls[key] = calls.get(key, 0.0) + value
            window[key] = window.get(key, 0.0) + d
            if code in SERVER_FAULTS:
                faults[key] = faults.get(key, 0.0) + d
        for key, buckets in cur.buckets.items():
            before = prev.buckets.get(key, {}) if prev else {}
            lb, wb = life_b.setdefault(key, {}), win_b.setdefault(key, {})
            for le, count in buckets.items():
                lb[le] = lb.get(le, 0.0) + count
                wb[le] = wb.get(le, 0.0) + _delta(count, before.get(le))
    interval = sum(seconds) / len(seconds) if seconds else 0.0
    out = []
    for key in sorted(calls):
        recent = window.get(key, 0.0) if have_prev else 0.0
        use_window = have_prev and recent > 0
        buckets = win_b.get(key, {}) if use_window else life_b.get(key, {})
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        out.append(
            MethodStats(
                service=service,
                grpc_service=key[0],
                method=key[1],
                calls=calls[key],
                rate=recent / interval if have_prev and interval else None,
                error_rate=faults.get(key, 0.0) / recent if use_window else None,
                p50_ms=None if p50 is None else p50 * 1000,
                p99_ms=None if p99 is None else p99 * 1000,
                lifetime_quantiles=not use_window,
            )
        )
    return out
