"""The gRPC methods that are the mesh's plumbing, not an application's calls: one list.

Every instance is health-checked every few seconds by every prober (the Envoy
edge, the embedded registry or Consul, Kubernetes), whether anybody uses the
shop or not; reflection serves tools. The interceptors treat these apart:

- access lines leave health checks out (`interceptors.logging`);
- a "*" fault never touches health checks or reflection (`interceptors.traffic`,
  `mesh.traffic.policy`): a registry that saw injected failures would deregister
  the instance;
- a health check that arrives without a trace of its caller's starts none
  (`interceptors.tracing`): traced, the probes alone made an idle `make run`
  export two spans a second per instance for the trace sink to throw away.
"""

from __future__ import annotations

from typing import Final

HEALTH_PREFIX: Final = "/grpc.health.v1.Health/"
HEALTH_METHODS: Final = frozenset({HEALTH_PREFIX + "Check", HEALTH_PREFIX + "Watch"})
# Method prefixes a "*" fault leaves out.
PLUMBING_PREFIXES: Final = (HEALTH_PREFIX, "/grpc.reflection.")


def is_health_check(full_method: str) -> bool:
    """True for `/grpc.health.v1.Health/<anything>`."""
    return full_method.startswith(HEALTH_PREFIX)
