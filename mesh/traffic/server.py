"""The server side of a traffic policy: this instance's faults, from the watched policy.

`serve_traffic(service, track, watcher)` makes the (generic) traffic interceptor
of interceptors/traffic.py and keeps its fault rules equal to the faults of
`service`'s policy that apply to this instance's `track` (subset "*" or its
own). Without a watcher (no policy store, or a test runtime) the interceptor
only propagates `x-mesh-track`.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from interceptors.traffic import FaultRule, TrafficServerInterceptor
from mesh.traffic.policy import Fault, TrafficPolicy
from mesh.traffic.watcher import PolicyWatcher


def fault_rule(fault: Fault) -> FaultRule:
    """The interceptor's rule for one policy fault (percents → fractions)."""
    return FaultRule(
        method=fault.method,
        abort_fraction=fault.abort_percent / 100,
        abort_code=grpc.StatusCode[fault.abort_status],
        delay_fraction=fault.delay_percent / 100 if fault.delay_ms else 0.0,
        delay_s=fault.delay_ms / 1000,
    )


def fault_rules(policy: TrafficPolicy | None, track: str) -> list[FaultRule]:
    """The rules an instance of `track` applies under `policy`, in the policy's order."""
    return [] if policy is None else [fault_rule(f) for f in policy.faults_for(track)]


def serve_traffic(
    service: str, track: str, watcher: PolicyWatcher | None
) -> tuple[TrafficServerInterceptor, Callable[[], None]]:
    """The interceptor for this instance and the function that stops following the policy."""
    interceptor = TrafficServerInterceptor()
    if watcher is None:
        return interceptor, lambda: None

    def apply(policy: TrafficPolicy | None) -> None:
        interceptor.set_rules(fault_rules(policy, track))

    return interceptor, watcher.subscribe(service, apply)
