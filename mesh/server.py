"""Server bootstrap: one call runs a service on the mesh.

`start_service` starts a `grpc.aio` server with the service's servicers behind
the server interceptor chain (tracing → metrics → logging → errors → deadline →
decoding, outermost first; then the caller policy and the end-user
context, mesh/security/end_user.py), on an mTLS port requiring a client
certificate from the mesh CA (mesh/security/; MESH_TLS=off: plaintext, warned),
grpc.health.v1 following the service's dependencies, server reflection (v1alpha,
which grpcurl 1.8.6 speaks, and v1; public services only by default), the admin HTTP port
(`/health`, `/metrics`), and registers the instance in the registry.

`RunningService.stop` undoes it in the order that loses no call: report
NOT_SERVING, deregister, stop accepting, drain in-flight calls within the
grace, run the on_stop hooks.

`run_service` is a service's blocking `main()`: settings from the environment
(a malformed one prints the SettingsError and exits 2), logging, the runtime,
signals (SIGTERM/SIGINT → graceful stop, exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from base.backoff import Backoff
from base.settings import default_of
from interceptors import _fastpath
from interceptors.deadline import DeadlineServerInterceptor
from interceptors.decoding import MalformedRequestInterceptor
from interceptors.errors import ErrorServerInterceptor
from interceptors.fused import FusedServerInterceptor
from interceptors.logging import LoggingServerInterceptor
from interceptors.metrics import MetricsServerInterceptor, RpcMetrics
from interceptors.registered import chained_server
from interceptors.tracing import TracingServerInterceptor
from mesh.admin import AdminBindError, AdminIdentity, AdminRoute, AdminServer
from mesh.api.options import EDGE, is_internal
from mesh.discovery.registry import Instance, Registry, RegistryUnavailable
from mesh.gc_tuning import tune_after_start
from mesh.health import DependencyCheck, DrainingHealthServicer, HealthMonitor, HealthReport
from mesh.instance_info import instance_info
from mesh.reflection import enable_reflection
from mesh.security.end_user import end_user_policy
from mesh.security.identity import MeshIdentity, warn_if_plaintext
from mesh.security.pki import PkiError, spiffe_id
from mesh.security.policy import caller_policy
from mesh.settings import Settings, SettingsError
from mesh.traffic.server import serve_traffic

if TYPE_CHECKING:
    from mesh.client.runtime import MeshRuntime

log = logging.getLogger(__name__)

# Generic only in grpc-stubs, so the alias is a string.
ServerInterceptor: TypeAlias = "grpc.aio.ServerInterceptor[Any, Any]"
AddServicer = Callable[[Any, grpc.aio.Server], None]
Hook = Callable[[], Awaitable[None]]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_REGISTER_RETRY_INITIAL_S = 0.4
_REGISTER_RETRY_MAX_S = 10.0
_DEREGISTER_TIMEOUT_S = 5.0


class ServiceStartError(RuntimeError):
    """The service cannot start (port taken, a dependency unreachable at start).

    `run_service` prints the message, without a traceback, and exits 1.
    """


class RuntimeLike(Protocol):
    """What the bootstrap uses of `mesh.client.runtime.MeshRuntime` (tests pass a stand-in)."""

    @property
    def registry(self) -> Registry | None: ...
    @property
    def prometheus(self) -> CollectorRegistry: ...
    @property
    def metrics(self) -> RpcMetrics | None: ...  # None: no metrics interceptor
    @property
    def tracer_provider(self) -> TracerProvider | None: ...  # None: no tracing interceptor


@dataclass
class ServiceDefinition:
    """What a service brings; the bootstrap adds everything else."""

    name: str
    """Registry name, e.g. "orders"."""
    servicers: Sequence[tuple[AddServicer, Any]]
    """[(orders_pb2_grpc.add_OrderServiceServicer_to_server, servicer), ...]"""
    service_names: Sequence[str]
    """Full gRPC service names served, e.g. ["shop.orders.v1.OrderService"]: health + reflection."""
    checks: Sequence[DependencyCheck] = ()
    on_start: Sequence[Hook] = ()
    """Awaited after the server listens, before the instance is registered."""
    on_stop: Sequence[Hook] = ()
    """Awaited after the drain (each one even if an earlier one fails)."""
    tags: Sequence[str] = ()
    interceptors: Sequence[ServerInterceptor] = ()
    """Extra server interceptors (auth, validation), innermost, after the mesh chain.

    One with a `wrap_method` (interceptors/registered.py) is applied once per method at
    registration like the mesh chain; one without runs per call as a grpc.aio interceptor,
    and so, to keep the order, does the chain before it (~10 µs a call each)."""
    check_interval_s: float = 5.0
    check_timeout_s: float = 2.0
    admin_routes: Sequence[AdminRoute] = ()
    """Extra endpoints on the admin HTTP port (e.g. sagas), beside /health and /metrics."""
    reflection: bool | None = None
    """Server reflection; None: only for services not marked `(meshproto.api.v1.internal)`."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ServiceDefinition.name is empty")
        for full in self.service_names:
            if "." not in full:
                raise ValueError(f"service name {full!r} is not package-qualified")


def proto_packages(service_names: Sequence[str]) -> list[str]:
    """Proto packages of full service names ("shop.orders.v2.OrderService" → "shop.orders.v2")."""
    return sorted({name.rsplit(".", 1)[0] for name in service_names})


def server_interceptors(
    runtime: RuntimeLike, settings: Settings | None = None, *, fused: bool | None = None
) -> list[ServerInterceptor]:
    """The mesh server chain, outermost first:
    tracing → metrics → logging → errors → deadline → decoding.

    Errors sit inside metrics and logging so those see the mapped status code;
    decoding (undecodable bodies → INVALID_ARGUMENT, not grpc.aio's UNKNOWN) is
    innermost so its error is mapped too; tracing/metrics are left out when the
    runtime has none. The access log samples as `settings` say
    (MESH_ACCESS_LOG_EVERY / _SLOW_MS; their defaults without settings).

    `fused` (default: unless MESH_FASTPATH=0) makes it one interceptor doing the
    six's work (interceptors/fused.py, same results, a fraction of the CPU); either way
    the list is what extra interceptors (caller policy, a service's) follow.
    """
    if settings is None:
        every = int(default_of(Settings, "access_log_every"))
        slow_ms = float(default_of(Settings, "access_log_slow_ms"))
    else:
        every, slow_ms = settings.access_log_every, settings.access_log_slow_ms
    observers: list[Any] = []
    if runtime.tracer_provider is not None:
        observers.append(TracingServerInterceptor(runtime.tracer_provider))
    if runtime.metrics is not None:
        observers.append(MetricsServerInterceptor(runtime.metrics))
    logging_ = LoggingServerInterceptor(sample_every=every, slow_ms=slow_ms)
    deadline = DeadlineServerInterceptor()
    if _fastpath.FUSE_SERVER_CHAIN if fused is None else fused:
        return [FusedServerInterceptor([*observers, logging_, deadline])]
    return [
        *observers,
        logging_,
        ErrorServerInterceptor(),
        deadline,
        MalformedRequestInterceptor(),
    ]


def _advertised_host(host: str) -> str:
    """The address others reach us at: a wildcard bind is advertised as this host's address."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


def _bind_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class RunningService:
    """A started service. `stop()` is idempotent; concurrent callers share one stop."""

    def __init__(
        self,
        definition: ServiceDefinition,
        settings: Settings,
        *,
        server: grpc.aio.Server,
        health: HealthMonitor,
        health_servicer: DrainingHealthServicer,
        admin: AdminServer,
        instance: Instance,
        registry: Registry | None,
        identity: MeshIdentity | None = None,
        owns_identity: bool = False,
    ) -> None:
        self.definition = definition
        self.identity = identity
        self._owns_identity = owns_identity
        self.settings = settings
        self.server = server
        self.health = health
        self.admin = admin
        self.instance = instance
        self._health_servicer = health_servicer
        self._registry = registry
        self._background: list[asyncio.Task[None]] = []
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        return self.instance.port

    @property
    def admin_port(self) -> int:
        return self.admin.port

    @property
    def address(self) -> str:
        return self.instance.address

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING → deregister → stop accepting → drain (≤ grace) → on_stop hooks.

        `grace_s` defaults to settings.drain_grace_s.
        """
        if self._stop_task is None:
            grace = self.settings.drain_grace_s if grace_s is None else grace_s
            self._stop_task = asyncio.create_task(self._stop(grace), name="service-stop")
        await asyncio.shield(self._stop_task)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def register(self) -> None:
        """Register now, or keep retrying in the background while the registry is down."""
        registry = self._registry
        if registry is None:
            return
        try:
            await registry.register(self.instance)
            return
        except RegistryUnavailable as exc:
            log.warning("registry unavailable, will keep trying to register: %s", exc)
        self._background.append(asyncio.create_task(self._register_later(registry)))

    async def _register_later(self, registry: Registry) -> None:
        backoff = Backoff(_REGISTER_RETRY_INITIAL_S, _REGISTER_RETRY_MAX_S)
        while True:
            await asyncio.sleep(backoff.next())  # backoff between attempts, not synchronisation
            try:
                await registry.register(self.instance)
            except RegistryUnavailable as exc:
                log.debug("registering %s failed again: %s", self.instance.id, exc)
            else:
                log.info("registered %s after a registry outage", self.instance.id)
                return

    async def _stop(self, grace_s: float) -> None:
        name = self.definition.name
        log.info("%s %s stopping (grace %.1fs)", name, self.instance.id, grace_s)
        # 1. Health first, so health-checking clients and registries stop routing here.
        await self._health_servicer.enter_graceful_shutdown()
        await self.health.drain()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # 2. Deregister: discovery-driven clients drop the instance.
        if self._registry is not None:
            try:
                await asyncio.wait_for(
                    self._registry.deregister(self.instance.id), _DEREGISTER_TIMEOUT_S
                )
            except (RegistryUnavailable, TimeoutError) as exc:
                log.warning("deregistering %s failed: %s", self.instance.id, exc)
        # 3+4. Stop accepting and drain: in-flight calls get the grace, then are cancelled.
        await self.server.stop(grace_s)
        # 5. Hooks, each even if an earlier one fails.
        for hook in self.definition.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("%s on_stop hook %r failed", name, hook)
        await self.admin.stop()
        if self._owns_identity and self.identity is not None:
            await self.identity.close()
        log.info("%s %s stopped", name, self.instance.id)
        self._stopped.set()


async def start_service(
    definition: ServiceDefinition,
    settings: Settings,
    runtime: RuntimeLike,
    *,
    interceptors: Sequence[ServerInterceptor] | None = None,
    identity: MeshIdentity | None = None,
) -> RunningService:
    """Start `definition` on settings.host:settings.grpc_port and register it.

    Order: listen → admin port → on_start hooks → first dependency probe
    (health SERVING/NOT_SERVING) → register → periodic probing.
    `interceptors` replaces the mesh chain (`server_interceptors(runtime)`)
    when given; `definition.interceptors` always come after it. The chain is
    wrapped around each method's handler when it is registered, not run by
    grpc.aio per call (interceptors/registered.py).

    With `settings.security.tls` (the default) the port requires a client
    certificate from the mesh CA and presents `identity` (default: the
    runtime's when it is this service's, else loaded from the PKI directory
    and renewed in the background until the service stops).
    """
    identity, owns_identity = _server_identity(definition.name, settings, runtime, identity)
    chain = list(server_interceptors(runtime, settings) if interceptors is None else interceptors)
    if identity is not None:
        # Who may call what (the contracts' callers), before any handler and the
        # service's own interceptors run.
        metrics = runtime.metrics
        chain.append(
            caller_policy(
                settings.security.trust_domain, metrics.record_denial if metrics else None
            )
        )
    # The end user the call acts for, and the methods' end-user requirements (after the
    # caller policy: whose metadata is believed depends on who the caller is).
    chain.append(
        end_user_policy(
            definition.name,
            definition.service_names,
            settings.security.trust_domain if identity is not None else None,
            runtime.metrics.record_denial if runtime.metrics else None,
        )
    )
    # Traffic policy: `x-mesh-track` propagation and this instance's injected faults
    # (after the caller policy: a refused caller is refused, not faulted).
    track = settings.track or settings.version
    if runtime.metrics is not None:  # `/metrics` says this instance's version and track
        instance_info(runtime.metrics.registry, definition.name, settings.version, track)
    # The edge applies the service-wide fault itself: its calls skip it here (mTLS only).
    edge = None if identity is None else spiffe_id(settings.security.trust_domain, EDGE)
    traffic, _ = serve_traffic(definition.name, track, getattr(runtime, "traffic", None), edge)
    chain.append(traffic)
    chain += definition.interceptors
    # The chain wraps each method's handler once, as it is registered: no grpc.aio
    # interceptor runs per call (interceptors/registered.py), unless the service brings
    # one of its own that decides per call (then it and what precedes it stay interceptors).
    registrar = chained_server(
        chain,
        # A second server on the same port must fail, not silently share its traffic.
        options=[("grpc.so_reuseport", 0)],
    )
    server = registrar.server
    for add, servicer in definition.servicers:
        add(servicer, registrar)

    health_servicer = DrainingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    reflected = _reflected(definition)
    if reflected:
        enable_reflection([*reflected, HEALTH_SERVICE], registrar)
    # NOT_SERVING until the dependencies have been probed once.
    for svc in ("", *definition.service_names):
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def publish(report: HealthReport) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if report.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in ("", *definition.service_names):
            await health_servicer.set(svc, status)

    monitor = HealthMonitor(
        definition.checks,
        interval_s=definition.check_interval_s,
        timeout_s=definition.check_timeout_s,
        on_change=publish,
        timeouts_to_fail=2,  # a busy pool under load is not a broken database
    )
    admin = AdminServer(
        report=lambda: monitor.report,
        prometheus=runtime.prometheus,
        identity=AdminIdentity(definition.name, settings.instance_id, settings.version),
        routes=definition.admin_routes,
    )

    target = _bind_target(settings.host, settings.grpc_port)
    try:
        if identity is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, identity.server_credentials())
    except RuntimeError as exc:
        raise ServiceStartError(f"cannot bind gRPC port {target} (MESH_GRPC_PORT): {exc}") from exc
    await server.start()
    try:
        if owns_identity and identity is not None:
            identity.start()
        admin_port = await admin.start(settings.host, settings.admin_port)
        for hook in definition.on_start:
            await hook()
        await monitor.refresh()
        instance = Instance(
            id=settings.instance_id,
            service=definition.name,
            host=_advertised_host(settings.advertise_host or settings.host),
            port=port,
            version=settings.version,
            tags=tuple(definition.tags),
            meta={
                "proto_packages": ",".join(proto_packages(definition.service_names)),
                "admin_port": str(admin_port),
                "health_service": "",
                "track": track,
            },
        )
        running = RunningService(
            definition,
            settings,
            server=server,
            health=monitor,
            health_servicer=health_servicer,
            admin=admin,
            instance=instance,
            registry=runtime.registry,
            identity=identity,
            owns_identity=owns_identity,
        )
        await running.register()
    except BaseException:
        # A half-started service must not keep its ports; it never got registered.
        await monitor.stop()
        await server.stop(0)
        await admin.stop()
        if owns_identity and identity is not None:
            await identity.close()
        raise
    monitor.start()
    log.info(
        "%s %s serving on %s (%s, admin port %d, health %s)",
        definition.name,
        instance.id,
        instance.address,
        f"mTLS as {identity.spiffe_id}" if identity is not None else "PLAINTEXT",
        admin_port,
        monitor.report.status,
    )
    return running


def _reflected(definition: ServiceDefinition) -> list[str]:
    """The services reflection lists: all of them, none, or (default) the non-internal ones."""
    if definition.reflection is not None:
        return list(definition.service_names) if definition.reflection else []
    public = []
    for name in definition.service_names:
        try:
            descriptor = descriptor_pool.Default().FindServiceByName(name)
        except KeyError:
            descriptor = None
        if descriptor is None or not is_internal(descriptor):
            public.append(name)
    return public


def _server_identity(
    service: str, settings: Settings, runtime: RuntimeLike, given: MeshIdentity | None
) -> tuple[MeshIdentity | None, bool]:
    """(the identity the server presents, whether the server owns it); None when TLS is off."""
    if not settings.security.tls:
        warn_if_plaintext(settings.security, service)
        return None, False
    if given is not None:
        return given, False
    shared = getattr(runtime, "identity", None)
    if isinstance(shared, MeshIdentity) and shared.service == service:
        return shared, False
    try:
        return MeshIdentity.load(service, settings.security), True
    except PkiError as exc:
        raise ServiceStartError(f"no identity for {service}: {exc}") from exc


# --- process entry point -----------------------------------------------------------

Build = Callable[[Settings, "MeshRuntime"], Awaitable[ServiceDefinition]]


def setup_logging(level: str) -> None:
    """Plain line logging to stderr at MESH_LOG_LEVEL."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def run_service(name: str, build: Build, *, grpc_port: int, admin_port: int) -> None:
    """Blocking `main()` of a service: returns after a graceful stop (exit status 0).

    Exits 2 with the message (no traceback) on a malformed setting, 1 when the
    service cannot start.
    """
    try:
        settings = Settings.from_env(name, grpc_port=grpc_port, admin_port=admin_port)
    except SettingsError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    try:
        asyncio.run(_serve(build, settings))
    except SettingsError as exc:  # raised while building (a service's own settings)
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (ServiceStartError, AdminBindError, PkiError) as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)


async def _serve(build: Build, settings: Settings) -> None:
    from mesh.client.runtime import (
        MeshRuntime,  # lazily: the runtime pulls in the whole client side
    )

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop_requested.is_set():
            log.warning("%s again: already stopping", signum.name)
            return
        log.info("%s: stopping", signum.name)
        stop_requested.set()

    # Installed before anything starts, so a signal during start-up still stops cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    try:
        runtime = await MeshRuntime.create(settings)
    except ValueError as exc:  # a malformed OTEL_* (or registry) setting, named in the message
        raise SettingsError(str(exc)) from exc
    try:
        # A signal during start-up (a build waiting on its database) stops it too.
        starting = asyncio.create_task(_start(build, settings, runtime), name="service-start")
        stop_wait = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("stopped during start-up")
            return
        running = starting.result()
        tune_after_start(settings.gc_gen0_threshold)
        await stop_requested.wait()
        await running.stop()
    finally:
        await runtime.close()


async def _start(build: Build, settings: Settings, runtime: MeshRuntime) -> RunningService:
    definition = await build(settings, runtime)
    return await start_service(definition, settings, runtime)
