"""The server side of a traffic policy: this instance's faults, from the watched policy.

`serve_traffic(service, track, watcher)` makes the (generic) traffic interceptor
of interceptors/traffic.py and keeps its fault rules equal to the faults of
`service`'s policy that apply to this instance's `track` (subset "*" or its
own). Without a watcher (no policy store, or a test runtime) the interceptor
only propagates `x-mesh-track`.

The Envoy edge applies the first fault of subset "*" and method "*" itself, to every
call it routes to the service (gRPC and REST, `mesh/edge/subsets.py`). That rule is
therefore made exempt for the edge's identity (`edge_identity`, its SPIFFE id): a call
through the edge is faulted once, by the edge, at the configured rate (not
1 - (1 - p)^2: 36 % for 20 %), while a direct proxyless call is faulted here. Every
other fault (a subset's, a method's) is applied here only, for every caller. Limit:
without mTLS (`edge_identity` None) the server cannot tell the edge, and such a fault
hits a call through the edge twice.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from interceptors.traffic import FaultRule, TrafficServerInterceptor
from mesh.edge.subsets import edge_fault
from mesh.traffic.policy import Fault, TrafficPolicy
from mesh.traffic.watcher import PolicyWatcher


def fault_rule(fault: Fault, exempt: frozenset[str] = frozenset()) -> FaultRule:
    """The interceptor's rule for one policy fault (percents → fractions)."""
    return FaultRule(
        exempt=exempt,
        method=fault.method,
        abort_fraction=fault.abort_percent / 100,
        abort_code=grpc.StatusCode[fault.abort_status],
        delay_fraction=fault.delay_percent / 100 if fault.delay_ms else 0.0,
        delay_s=fault.delay_ms / 1000,
    )


def fault_rules(
    policy: TrafficPolicy | None, track: str, edge_identity: str | None = None
) -> list[FaultRule]:
    """The rules an instance of `track` applies under `policy`, in the policy's order;
    the edge's fault (`edge_fault`) exempts `edge_identity`'s calls."""
    if policy is None:
        return []
    edge = edge_fault(policy) if edge_identity else None
    exempt = frozenset({edge_identity}) if edge_identity else frozenset()
    return [fault_rule(f, exempt if f is edge else frozenset()) for f in policy.faults_for(track)]


def serve_traffic(
    service: str, track: str, watcher: PolicyWatcher | None, edge_identity: str | None = None
) -> tuple[TrafficServerInterceptor, Callable[[], None]]:
    """The interceptor for this instance and the function that stops following the policy."""
    interceptor = TrafficServerInterceptor()
    if watcher is None:
        return interceptor, lambda: None

    def apply(policy: TrafficPolicy | None) -> None:
        interceptor.set_rules(fault_rules(policy, track, edge_identity))

    return interceptor, watcher.subscribe(service, apply)
