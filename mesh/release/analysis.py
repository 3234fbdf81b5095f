"""Compare a release's new subset with the old one from the instances' own `/metrics`.

Each instance's admin `/metrics` has `grpc_server_handled_total{grpc_service,
grpc_method, grpc_code}` and the `grpc_server_handling_seconds` histogram
(interceptors/metrics.py); the registry says which track each instance is on, so
the sums per track need no label of their own. A `Snapshot` is the sums at one
moment; the difference of two is what each subset served in between: calls,
server errors, and a p99 from the histogram's buckets (the upper bound of the
bucket holding the 99th percentile, as Prometheus' histogram_quantile without its
interpolation: conservative by at most one bucket).

Only the application's calls count: health checks (Envoy's, every 2 s per host) and
reflection are left out, so they neither dilute the error rate nor skew the share.
Server errors are the statuses that say the server failed (UNKNOWN, INTERNAL,
UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS), not the caller's mistakes.

Limits: an instance that restarts mid-window resets its counters (its negative
deltas count as 0); calls still in flight at a snapshot count in the next window.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mesh.discovery.registry import Instance
from mesh.traffic.policy import track_of

SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"})
_IGNORED_SERVICES = ("grpc.health.", "grpc.reflection.")


@dataclass
class Counts:
    """Calls, server errors and latency buckets (le → cumulative count) of a subset."""

    calls: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        self.calls += other.calls
        self.errors += other.errors
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n

    def minus(self, before: Counts) -> Counts:
        return Counts(
            calls=max(0.0, self.calls - before.calls),
            errors=max(0.0, self.errors - before.errors),
            buckets={
                le: max(0.0, n - before.buckets.get(le, 0.0)) for le, n in self.buckets.items()
            },
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (None without data)."""
        if not self.buckets:
            return None
        ordered = sorted(self.buckets.items())
        total = ordered[-1][1]
        if total <= 0:
            return None
        for le, n in ordered:
            if n >= q * total:
                return le
        return math.inf


def parse_metrics(text: str) -> Counts:
    """The application calls of one instance's `/metrics` text."""
    out = Counts()
    for family in text_string_to_metric_families(text):
        if family.name not in ("grpc_server_handled", "grpc_server_handling_seconds"):
            continue
        for sample in family.samples:
            service = sample.labels.get("grpc_service", "")
            if service.startswith(_IGNORED_SERVICES):
                continue
            if sample.name == "grpc_server_handled_total":
                out.calls += sample.value
                if sample.labels.get("grpc_code") in SERVER_ERRORS:
                    out.errors += sample.value
            elif sample.name == "grpc_server_handling_seconds_bucket":
                le = float(sample.labels["le"])
                out.buckets[le] = out.buckets.get(le, 0.0) + sample.value
    return out


Snapshot = dict[str, dict[str, Counts]]  # track -> instance id -> counts


async def snapshot(instances: Iterable[Instance], timeout_s: float = 2.0) -> Snapshot:
    """Every instance's counts, by track; an instance that does not answer is left out."""
    out: Snapshot = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:

        async def one(inst: Instance) -> None:
            admin = inst.meta.get("admin_port")
            if not admin:
                return
            try:
                async with s.get(f"http://{inst.host}:{admin}/metrics") as r:
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError):
                return
            out.setdefault(track_of(inst), {})[inst.id] = parse_metrics(text)

        await asyncio.gather(*(one(i) for i in instances))
    return out


def window(before: Snapshot, after: Snapshot) -> dict[str, Counts]:
    """What each track served between two snapshots (instances seen in `after`)."""
    out: dict[str, Counts] = {}
    for track, instances in after.items():
        total = Counts()
        for inst_id, counts in instances.items():
            total.add(counts.minus(before.get(track, {}).get(inst_id, Counts())))
        out[track] = total
    return out


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the new subset counts as a regression against the old one."""

    # New error rate above the old one by more than this (0.05: 5 points).
    max_error_rate_increase: float = 0.05
    # New p99 above max(old p99 * factor, old p99 + slack), both with p99_min_calls:
    # a p99 of a dozen calls is their maximum, and a fresh instance's first calls
    # (new connections, cold caches) are slow on a busy machine.
    max_p99_factor: float = 2.0
    p99_slack_s: float = 0.25
    p99_min_calls: int = 50
    # Fewer new-subset calls than this in a window: no error-rate verdict yet.
    min_calls: int = 10


def regression(old: Counts, new: Counts, t: Thresholds) -> str | None:
    """Why `new` regressed against `old` (None: it did not, or too few calls to say)."""
    if new.calls < t.min_calls:
        return None
    if new.error_rate > old.error_rate + t.max_error_rate_increase:
        return (
            f"error rate {new.error_rate:.1%} ({new.errors:.0f}/{new.calls:.0f}) vs"
            f" {old.error_rate:.1%} on the old subset"
        )
    new_p99, old_p99 = new.quantile(0.99), old.quantile(0.99)
    enough = min(new.calls, old.calls) >= t.p99_min_calls
    if new_p99 is not None and old_p99 is not None and enough:
        limit = max(old_p99 * t.max_p99_factor, old_p99 + t.p99_slack_s)
        if new_p99 > limit:
            return f"p99 {new_p99 * 1000:.0f} ms vs {old_p99 * 1000:.0f} ms on the old subset"
    return None


def summary(counts: Mapping[str, Counts]) -> dict[str, dict[str, float | None]]:
    """Per track: calls, share of all calls (%), error rate, p99 (ms), for the state file."""
    total = sum(c.calls for c in counts.values())
    out: dict[str, dict[str, float | None]] = {}
    for track, c in sorted(counts.items()):
        p99 = c.quantile(0.99)
        out[track] = {
            "calls": c.calls,
            "share": round(100 * c.calls / total, 2) if total else None,
            "error_rate": round(c.error_rate, 4),
            "p99_ms": None if p99 is None or math.isinf(p99) else round(p99 * 1000, 1),
        }
    return out
