"""Server side of traffic management: the incoming call's track, and fault injection.

`TrafficServerInterceptor` does two small things per call, both in
`intercept_service` (no wrapper around the behaviour unless a fault fires), or
in the one wrapper `wrap_method` puts around the method's handler when the chain
is applied at registration (interceptors/registered.py):

* **Track propagation.** When the incoming call carries `x-mesh-track`, its value
  goes to the contextvar `incoming_track` for the handler's task, so the calls the
  handler makes through the mesh prefer (and forward) the same track, the way
  deadlines and trace context propagate. grpc.aio runs the interceptors and then
  the behaviour in one task per call, so the value never leaks to another call.
* **Fault injection** (Istio-style), from `FaultRule`s the owner sets at any time
  (`set_rules`, e.g. from a watched traffic policy): for a call whose method a
  rule matches, abort it with the rule's status (before the handler runs, so no
  work is done) with probability `abort_fraction`, else delay it by `delay_s`
  with probability `delay_fraction`. The first matching rule wins. An aborted
  call ends like any failed call, so the metrics and logging interceptors outside
  this one count it.

Cost: no rule → one metadata scan for the track and nothing else; rules → one
dict lookup of the method (cached per method) and one random draw per call.
Place it inside metrics/logging (they must see injected failures) and outside
the handler's own interceptors.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from interceptors._client import ServerBase
from interceptors._handler import (
    Continuation,
    StreamBehaviour,
    UnaryBehaviour,
    wrap_handler,
)
from interceptors.plumbing import PLUMBING_PREFIXES
from interceptors.policy import peer_identity

TRACK_KEY = "x-mesh-track"

# The `x-mesh-track` of the server call being handled (None: none, or not in a call).
incoming_track: ContextVar[str | None] = ContextVar("shop_mesh_incoming_track", default=None)


@dataclass(frozen=True, slots=True)
class FaultRule:
    """Abort or delay a share of the calls to `method` ("*", "/pkg.Service/*" or full)."""

    method: str = "*"
    abort_fraction: float = 0.0
    abort_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    delay_fraction: float = 0.0
    delay_s: float = 0.0
    # Peers (SPIFFE ids) that already apply this fault themselves: their calls skip it.
    exempt: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not (0 <= self.abort_fraction <= 1 and 0 <= self.delay_fraction <= 1):
            raise ValueError("fault fractions must be between 0 and 1")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        if self.abort_code is grpc.StatusCode.OK:
            raise ValueError("a fault cannot abort with OK")

    def matches(self, method: str) -> bool:
        """Whether the rule covers `method`; "*" leaves out health checks and reflection
        (a registry's health check must not see injected failures: it would deregister
        the instance instead of rehearsing a failure of its API)."""
        m = self.method
        if m == "*":
            return not method.startswith(PLUMBING_PREFIXES)  # named explicitly, they are hit
        return m == method or (m.endswith("/*") and method.startswith(m[:-1]))


def _exempt(rule: FaultRule, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the call's peer already applied `rule` (see FaultRule.exempt)."""
    return bool(rule.exempt) and peer_identity(context) in rule.exempt


def _aborting(
    handler: grpc.RpcMethodHandler[Any, Any], rule: FaultRule
) -> grpc.RpcMethodHandler[Any, Any]:
    code = rule.abort_code
    details = f"fault injected: {code.name}"

    def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if _exempt(rule, context):
                return await behaviour(request, context)
            await context.abort(code, details)

        return abort

    def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
        async def abort(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if not _exempt(rule, context):
                await context.abort(code, details)
            async for response in behaviour(request, context):
                yield response

        return abort

    return wrap_handler(handler, unary, stream)


def _delayed(
    handler: grpc.RpcMethodHandler[Any, Any], rule: FaultRule
) -> grpc.RpcMethodHandler[Any, Any]:
    delay_s = rule.delay_s

    def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def delayed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not _exempt(rule, context):
                await asyncio.sleep(delay_s)  # the injected delay itself
            return await behaviour(request, context)

        return delayed

    def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
        async def delayed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if not _exempt(rule, context):
                await asyncio.sleep(delay_s)  # the injected delay itself
            async for response in behaviour(request, context):
                yield response

        return delayed

    return wrap_handler(handler, unary, stream)


class _MethodFaults:
    """One method's rule and its abort/delay handlers, built once per inner handler."""

    __slots__ = ("aborting", "delayed", "handler", "rule")

    def __init__(self, rule: FaultRule, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self.rule = rule
        self.handler = handler
        self.aborting = _aborting(handler, rule) if rule.abort_fraction else None
        self.delayed = _delayed(handler, rule) if rule.delay_fraction else None


class TrafficServerInterceptor(ServerBase):
    """Track propagation and fault injection (see the module docstring)."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, rng: random.Random | None = None):
        self._random = (rng or random.Random()).random
        self._rules: tuple[FaultRule, ...] = ()
        # method → its faults (None: no rule matches); cleared when the rules change.
        self._methods: dict[str, _MethodFaults | None] = {}
        self.set_rules(rules)

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return self._rules

    def set_rules(self, rules: Iterable[FaultRule]) -> None:
        """Replace the fault rules (takes effect for the next call)."""
        self._rules = tuple(rules)
        self._methods = {}

    async def intercept_service(  # type: ignore[override]  # None: no such method
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        track = _track(handler_call_details.invocation_metadata)
        if track is not None:
            incoming_track.set(track)
        handler = await continuation(handler_call_details)
        if handler is None or not self._rules:
            return handler
        return self._pick(handler_call_details.method, handler)

    def _pick(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler this call runs: `handler`, or its aborting/delayed variant."""
        faults: _MethodFaults | None = self._methods.get(method, _MISSING)
        if faults is _MISSING or (faults is not None and faults.handler is not handler):
            rule = next((r for r in self._rules if r.matches(method)), None)
            faults = None if rule is None else _MethodFaults(rule, handler)
            self._methods[method] = faults
        if faults is None:
            return handler
        rule = faults.rule
        if faults.aborting is not None and self._random() < rule.abort_fraction:
            return faults.aborting
        if faults.delayed is not None and self._random() < rule.delay_fraction:
            return faults.delayed
        return handler

    def wrap_method(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` for `method` doing, per call, what `intercept_service` does per call
        (interceptors.registered runs the chain so): the track, then the fault draw."""
        pick = self._pick

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def traffic(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                track = _track(context.invocation_metadata())
                if track is not None:
                    incoming_track.set(track)
                if self._rules:
                    picked = pick(method, handler)
                    if picked is not handler:
                        return await _behaviour(picked)(request, context)
                return await behaviour(request, context)

            return traffic

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def traffic(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                # An async generator's body runs in the call's task context.
                track = _track(context.invocation_metadata())
                if track is not None:
                    incoming_track.set(track)
                run = behaviour
                if self._rules:
                    picked = pick(method, handler)
                    if picked is not handler:
                        run = _behaviour(picked)
                async for response in run(request, context):
                    yield response

            return traffic

        return wrap_handler(handler, unary, stream)


def _track(metadata: Any) -> str | None:
    """The call's `x-mesh-track`, or None."""
    for key, value in metadata or ():
        if key == TRACK_KEY:
            return value if isinstance(value, str) else value.decode()  # type: ignore[no-any-return]
    return None


def _behaviour(handler: Any) -> Any:
    """A handler's behaviour, whatever its arity."""
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


_MISSING: Any = object()
