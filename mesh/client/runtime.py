"""MeshRuntime: what a process shares between its server and its mesh clients.

One per process (a test may make several): the settings, the registry, a
Prometheus registry of its own with the RPC metrics, the tracer provider,
the circuit breakers, and the client channels it opened. The server bootstrap
(mesh/server.py) uses `registry`, `prometheus`, `metrics`, `tracer_provider`,
`breakers` and `settings`; clients use `connect`.

    runtime = await MeshRuntime.create(settings)
    orders = await runtime.connect("orders", orders_pb2_grpc.OrderServiceStub)
    reply = await orders.GetOrder(request)          # deadline, retry, breaker, tracing,
    ...                                             # metrics, then one healthy instance
    await runtime.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from interceptors.breaker import BreakerClientInterceptor, BreakerConfig, BreakerSet
from interceptors.deadline import DeadlineClientInterceptor
from interceptors.end_user import EndUserClientInterceptor
from interceptors.metrics import MetricsClientInterceptor, RpcMetrics
from interceptors.retry import RetryBudget, RetryClientInterceptor, RetryPolicy
from interceptors.tracing import TracingClientInterceptor, make_tracer_provider
from mesh.api.options import IdempotentMethods
from mesh.balancer.pool import EndpointStatus
from mesh.client.channel import MeshChannel
from mesh.client.connect import ClientOptions, open_channel
from mesh.discovery.registry import Instance, Registry
from mesh.security.identity import MeshIdentity, warn_if_plaintext
from mesh.settings import Settings
from mesh.traffic.stores import policy_store_for
from mesh.traffic.watcher import PolicyWatcher

log = logging.getLogger(__name__)

S = TypeVar("S")


class MeshRuntime:
    """Shared per-process mesh state; make it with `await MeshRuntime.create(settings)`."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        tracer_provider: Any,
        *,
        owns_registry: bool = False,
        owns_tracer_provider: bool = False,
        identity: MeshIdentity | None = None,
    ) -> None:
        self.settings = settings
        # This process's service identity (None with MESH_TLS=off): clients present it,
        # and the server of the same service shares it (mesh/server.py).
        self.identity = identity
        self.registry = registry
        self.prometheus = CollectorRegistry()
        self.metrics = RpcMetrics(self.prometheus)
        self.tracer_provider = tracer_provider
        r = settings.resilience
        self.breakers = BreakerSet(
            BreakerConfig(
                failure_rate=r.breaker_failure_rate,
                min_calls=r.breaker_min_calls,
                window_s=r.breaker_window_s,
                cooldown_s=r.breaker_cooldown_s,
                half_open_calls=r.breaker_half_open_calls,
            ),
            on_change=self.metrics.on_breaker_change,
        )
        self.idempotent = IdempotentMethods()
        # Traffic policies (subset weights, faults) from the store beside the registry,
        # one shared watch per service: client pools and this process's server follow them.
        self.traffic = PolicyWatcher(policy_store_for(registry))
        self.channels: list[MeshChannel] = []
        self._shared: dict[tuple[str, ClientOptions], MeshChannel] = {}
        # One budget per called service: retries against one service must not
        # spend (or be starved by) another's.
        self._budgets: dict[str, RetryBudget] = {}
        self._owns_registry = owns_registry
        self._owns_tracer_provider = owns_tracer_provider
        self._closed = False

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        registry: Registry | None = None,
        tracer_provider: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> MeshRuntime:
        """A runtime for `settings`; the registry and tracer provider are made from the
        settings (and OTEL_* in `env`, default os.environ) unless given, and then closed
        by `close()`. With `settings.security.tls` the identity of `settings.service` is
        loaded (PkiError when the PKI directory has no CA) and renewed in the background."""
        identity = None
        if settings.security.tls:
            identity = MeshIdentity.load(settings.service, settings.security)
        else:
            warn_if_plaintext(settings.security, settings.service)
        owns_registry = registry is None
        if registry is None:
            from mesh.discovery import create_registry

            registry = create_registry(settings, identity=identity)
        owns_tracer = tracer_provider is None
        if tracer_provider is None:
            tracer_provider = make_tracer_provider(
                settings.service, os.environ if env is None else env
            )
        runtime = cls(
            settings,
            registry,
            tracer_provider,
            owns_registry=owns_registry,
            owns_tracer_provider=owns_tracer,
            identity=identity,
        )
        if identity is not None:
            identity.start()
        return runtime

    # -- clients ---------------------------------------------------------------------------

    def client_interceptors(
        self, service: str, *, default_deadline_s: float | None = None
    ) -> list[Any]:
        """The client chain for calls to `service`, outermost first:
        end user → deadline → retry → breaker → tracing → metrics (then the pick).

        The end user (interceptors/end_user.py) is the incoming call's, or the one set
        with `mesh.as_user`: every attempt carries it."""
        r = self.settings.resilience
        budget = self._budgets.get(service)
        if budget is None:
            budget = self._budgets[service] = RetryBudget(ratio=r.retry_budget_ratio)
        chain: list[Any] = [
            EndUserClientInterceptor(),
            DeadlineClientInterceptor(default_deadline_s or r.default_deadline_s),
            RetryClientInterceptor(
                RetryPolicy(
                    max_attempts=r.retry_max_attempts,
                    initial_backoff_s=r.retry_initial_backoff_s,
                    max_backoff_s=max(r.retry_max_backoff_s, r.retry_initial_backoff_s),
                ),
                budget,
                self.idempotent,
                self.metrics,
                service=service,
            ),
            BreakerClientInterceptor(self.breakers, service),
        ]
        if self.tracer_provider is not None:
            chain.append(TracingClientInterceptor(self.tracer_provider))
        chain.append(MetricsClientInterceptor(self.metrics, service))
        return chain

    def channel(self, service: str, **options: Any) -> MeshChannel:
        """The MeshChannel to `service` (see `ClientOptions` for `options`).

        Calls with the same options share one channel, hence one connection per
        instance: stubs of several APIs of one service (v1 and v2) cost nothing
        extra. Needs a running event loop.
        """
        if self._closed:
            raise RuntimeError("the mesh runtime is closed")
        if self.identity is not None and "identity" not in options:
            options = {**options, "identity": self.identity}
        opts = ClientOptions.from_settings(self.settings.resilience, options)
        shareable = (
            opts.interceptors is None and not opts.extra_interceptors and opts.credentials is None
        )
        key = (service, opts)
        if shareable and key in self._shared:
            return self._shared[key]
        if opts.interceptors is not None:
            chain = list(opts.interceptors)
        else:
            chain = self.client_interceptors(service, default_deadline_s=opts.default_deadline_s)
        chain.extend(opts.extra_interceptors)
        metrics = self.metrics

        def on_ejection(instance: Instance) -> None:
            metrics.record_ejection(service, instance.id)

        channel = open_channel(
            service, self.registry, chain, opts, on_ejection=on_ejection, policies=self.traffic
        )
        self.channels.append(channel)
        if shareable:
            self._shared[key] = channel
        return channel

    async def connect(
        self, service: str, stub_cls: Callable[[grpc.aio.Channel], S], **options: Any
    ) -> S:
        """A `stub_cls` stub whose calls go to `service`'s healthy instances."""
        return stub_cls(self.channel(service, **options))

    def client_status(self) -> dict[str, list[EndpointStatus]]:
        """Every client channel's instances (for `meshctl status`)."""
        out: dict[str, list[EndpointStatus]] = {}
        for ch in self.channels:
            out.setdefault(ch.service, []).extend(ch.pool.status())
        return out

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channels, then the registry and tracer provider if this runtime made them."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(ch.close() for ch in self.channels), return_exceptions=True)
        self.channels.clear()
        self._shared.clear()
        await self.traffic.close()
        if self.identity is not None:
            await self.identity.close()
        if self._owns_registry:
            try:
                await self.registry.close()
            except Exception:
                log.exception("closing the registry failed")
        if self._owns_tracer_provider and isinstance(self.tracer_provider, TracerProvider):
            # shutdown() flushes the batch processors: blocking, so off the loop.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.tracer_provider.shutdown)

    async def __aenter__(self) -> MeshRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
