"""A grpc.health.v1 Check against one instance, as Consul's gRPC check does it.

The embedded registry runs this from the registering process against its own
server, so an instance's registry status follows its gRPC health (the server
bootstrap sets NOT_SERVING while draining) exactly as with Consul, and the
server needs no registry-specific call.

With mTLS on (the default) the prober holds an identity: the registering
process's own (`ClientIdentity`, a `mesh.security.identity.MeshIdentity`),
presenting its certificate and verifying that the instance is the service it
registered (`<service>.<trust-domain>`). Health is allowed to every mesh
identity by the caller policy.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Bounded reconnect backoff: gRPC's default grows to 120 s, which would keep a
# restarted server "critical" long after it is back. A local subchannel pool
# keeps this probe's connection apart from the application's channels.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


class ClientIdentity(Protocol):
    """What a prober needs of an identity (mesh.security.identity.MeshIdentity)."""

    def channel_credentials(self) -> grpc.ChannelCredentials: ...
    def target_name(self, service: str) -> str: ...


class HealthProbe:
    """Checks `target` (host:port) for `service` ("" = the whole server) over one channel.

    With `identity`, over mTLS, verifying the server holds `callee`'s certificate.
    """

    def __init__(
        self,
        target: str,
        service: str = "",
        timeout_s: float = 1.0,
        *,
        identity: ClientIdentity | None = None,
        callee: str = "",
    ) -> None:
        self.target = target
        self.service = service
        self._timeout_s = timeout_s
        self._identity = identity
        self._callee = callee
        self._channel: grpc.aio.Channel | None = None

    async def check(self) -> tuple[bool, str]:
        """(serving, human-readable output), never raising for an unhealthy server."""
        if self._channel is None:
            if self._identity is not None:
                self._channel = grpc.aio.secure_channel(
                    self.target,
                    self._identity.channel_credentials(),
                    options=[
                        *_CHANNEL_OPTIONS,
                        ("grpc.ssl_target_name_override", self._identity.target_name(self._callee)),
                    ],
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE and self._identity is not None:
                # The next check connects anew, with the identity's current certificate
                # (this channel would reconnect with the one it was made with).
                await self.close()
            return False, f"gRPC check {self._label()}: {exc.code().name} {exc.details() or ''}"
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return serving, f"gRPC check {self._label()}: {name}"

    def _label(self) -> str:
        return f"{self.target}/{self.service}" if self.service else self.target

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)
