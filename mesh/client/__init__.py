"""The mesh client: discovery-aware channels and the runtime that builds them.

- `connect`: `ClientOptions` and `open_channel` (a `MeshChannel` over a registry);
- `channel`: `MeshChannel`, a grpc.aio channel that picks a healthy instance per call;
- `calls`: the call objects and the lean chain runner behind the channel;
- `runtime`: `MeshRuntime`, one per process: settings, registry, interceptors, metrics,
  tracing and a channel per service.

Picking, ejection and connection pooling live beside it in `mesh.balancer`.
"""

from mesh.client.channel import MeshChannel
from mesh.client.connect import ClientOptions, open_channel
from mesh.client.runtime import MeshRuntime

__all__ = ["ClientOptions", "MeshChannel", "MeshRuntime", "open_channel"]
