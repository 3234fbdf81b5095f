"""Helpers shared by client interceptors: new call details, never mutated ones."""

from __future__ import annotations

from typing import Any

import grpc

_UNSET: Any = object()


def replace_call_details(
    details: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = _UNSET,
    metadata: grpc.aio.Metadata | None = _UNSET,
) -> grpc.aio.ClientCallDetails:
    """A copy of `details` with `timeout` and/or `metadata` replaced."""
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if timeout is _UNSET else timeout,
        metadata=details.metadata if metadata is _UNSET else metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def with_metadata(
    details: grpc.aio.ClientCallDetails, extra: list[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    """A copy of `details` whose metadata has `extra` appended (a new Metadata object)."""
    md = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in extra:
        md.add(key, value)
    return replace_call_details(details, metadata=md)


def method_name(details: grpc.aio.ClientCallDetails) -> str:
    """The full method path as a str (`/pkg.Service/Method`)."""
    m = details.method
    return m.decode() if isinstance(m, bytes) else m
