"""A minimal gRPC reflection v1 client (`grpc.reflection.v1.ServerReflection`).

grpcurl 1.8.6 only speaks v1alpha, so tests of v1 call the v1 method path
themselves. v1's messages are v1alpha's under another package name (same
fields and numbers), so v1alpha's classes encode and decode them.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.support import pki

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def _ask(
    target: str, request: reflection_pb2.ServerReflectionRequest, callee: str = ""
) -> reflection_pb2.ServerReflectionResponse:
    # A service of the mesh speaks mTLS (`callee` names it); the edge's plaintext
    # listener does not.
    opened = (
        pki.mtls_channel(target, callee, caller="edge")
        if callee
        else grpc.aio.insecure_channel(target)
    )
    async with opened as channel:
        call = channel.stream_stream(
            V1_METHOD,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([request]), timeout=5)
        async for reply in call:
            return reply
    raise AssertionError("no reflection reply")


async def list_services_v1(target: str, callee: str = "") -> list[str]:
    """The service names `target` lists over reflection v1."""
    reply = await _ask(target, reflection_pb2.ServerReflectionRequest(list_services=""), callee)
    if reply.HasField("error_response"):
        raise AssertionError(reply.error_response.error_message)
    return sorted(s.name for s in reply.list_services_response.service)


async def file_containing_symbol_v1(
    target: str, symbol: str, callee: str = ""
) -> list[descriptor_pb2.FileDescriptorProto]:
    """The files (the one defining `symbol`, then its imports) over reflection v1."""
    reply = await _ask(
        target, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol), callee
    )
    if reply.HasField("error_response"):
        raise AssertionError(reply.error_response.error_message)
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
