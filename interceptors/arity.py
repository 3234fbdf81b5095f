"""Installing multi-arity client interceptors on a plain grpc.aio channel.

Every client interceptor here implements all four arities in one class, but
grpc.aio's `Channel` files each interceptor under the *first* arity it
implements (an if/elif chain, grpc/grpc#31442), so a multi-arity interceptor
passed as is silently skips every streaming call. `for_channel` splits them
into one single-arity adapter per arity, in order:

    grpc.aio.insecure_channel(addr, interceptors=for_channel(deadline, retry, tracing))

An adapter's method *is* the interceptor's bound method (no extra call
layer). The mesh's own chain runner calls the interceptors directly and does
not need this.

Still needed (re-checked 2026-12-02 with grpcio 1.85.3, the version the
`grpcio>=1.81.1` pin installs; grpc/aio/_channel.py still has the if/elif):
tests/unit/interceptors/test_arity.py pins the bug and fails once grpcio
fixes it, which is the signal to delete this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from interceptors._client import (
    StreamStreamBase,
    StreamUnaryBase,
    UnaryStreamBase,
    UnaryUnaryBase,
)


class _UnaryUnary(UnaryUnaryBase):
    def __init__(self, inner: Any) -> None:
        self.intercept_unary_unary = inner.intercept_unary_unary  # type: ignore[method-assign]

    async def intercept_unary_unary(self, *args: Any) -> Any:  # replaced per instance
        raise NotImplementedError


class _UnaryStream(UnaryStreamBase):
    def __init__(self, inner: Any) -> None:
        self.intercept_unary_stream = inner.intercept_unary_stream  # type: ignore[method-assign]

    async def intercept_unary_stream(self, *args: Any) -> Any:  # replaced per instance
        raise NotImplementedError


class _StreamUnary(StreamUnaryBase):
    def __init__(self, inner: Any) -> None:
        self.intercept_stream_unary = inner.intercept_stream_unary  # type: ignore[method-assign]

    async def intercept_stream_unary(self, *args: Any) -> Any:  # replaced per instance
        raise NotImplementedError


class _StreamStream(StreamStreamBase):
    def __init__(self, inner: Any) -> None:
        self.intercept_stream_stream = inner.intercept_stream_stream  # type: ignore[method-assign]

    async def intercept_stream_stream(self, *args: Any) -> Any:  # replaced per instance
        raise NotImplementedError


_ADAPTERS: tuple[tuple[type, type], ...] = (
    (grpc.aio.UnaryUnaryClientInterceptor, _UnaryUnary),
    (grpc.aio.UnaryStreamClientInterceptor, _UnaryStream),
    (grpc.aio.StreamUnaryClientInterceptor, _StreamUnary),
    (grpc.aio.StreamStreamClientInterceptor, _StreamStream),
)


def for_channel(*interceptors: Any) -> Sequence[Any]:
    """Interceptors for `grpc.aio.insecure_channel(..., interceptors=...)`, first = outermost."""
    out: list[Any] = []
    for base, adapter in _ADAPTERS:
        out.extend(adapter(i) for i in interceptors if isinstance(i, base))
    return out
