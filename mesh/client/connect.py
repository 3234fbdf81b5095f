"""Client options and the discovery-aware channel behind `connect()`.

`MeshRuntime.connect` (mesh/client/runtime.py) and `mesh.connect` are the usual way
in; this module is the part that needs no runtime: `ClientOptions` (what
`connect(..., **options)` accepts) and `open_channel`, which builds a
`MeshChannel` for one service from a registry and an interceptor chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import grpc

from mesh.balancer.outlier import OutlierConfig
from mesh.balancer.pool import DEFAULT_DRAIN_TIMEOUT_S, EjectionHook, EndpointPool
from mesh.client.channel import MeshChannel
from mesh.discovery.registry import Instance, Registry
from mesh.settings import RESILIENCE_DEFAULTS as _DEFAULTS
from mesh.settings import LbPolicy, ResilienceSettings
from mesh.traffic.watcher import PolicyWatcher

# Every instance gets its own connection (gRPC shares subchannels between
# channels with identical options otherwise), and reconnects are quick: the
# registry, not gRPC's 120 s backoff cap, decides when an instance is gone.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How one client channel balances, ejects and connects (`connect(**options)`).

    The balancing, outlier and wait defaults are the settings' (MESH_LB_POLICY,
    MESH_OUTLIER_*, MESH_DEFAULT_DEADLINE_S): the class defaults are
    `ResilienceSettings`' defaults, and `from_settings` takes the values read
    from the environment.
    """

    lb_policy: str = _DEFAULTS.lb_policy
    outlier_consecutive_failures: int = _DEFAULTS.outlier_consecutive_failures
    outlier_base_ejection_s: float = _DEFAULTS.outlier_base_ejection_s
    outlier_max_ejection_s: float = _DEFAULTS.outlier_max_ejection_s
    outlier_max_ejected_fraction: float = _DEFAULTS.outlier_max_ejected_fraction
    # Calls with no deadline wait this long for an instance before UNAVAILABLE.
    no_instance_wait_s: float = _DEFAULTS.default_deadline_s
    # A removed instance's calls in flight get this long before its channel closes.
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    # The default deadline of the chain's deadline interceptor (None: the settings').
    default_deadline_s: float | None = None
    # gRPC channel arguments added to (and overriding) DEFAULT_CHANNEL_OPTIONS.
    channel_options: tuple[tuple[str, Any], ...] = ()
    # TLS: channel credentials for every instance (None: the identity's, else plaintext).
    credentials: grpc.ChannelCredentials | None = field(default=None, compare=False)
    # mTLS: this process's identity (mesh.security.identity.MeshIdentity): each new
    # connection presents its current certificate and verifies the callee by name.
    identity: Any = field(default=None, compare=False)
    # The whole client chain instead of the runtime's (e.g. [] for none), outermost first.
    interceptors: tuple[Any, ...] | None = field(default=None, compare=False)
    # Interceptors run after the standard chain, nearest the call (e.g. auth metadata).
    extra_interceptors: tuple[Any, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.lb_policy not in get_args(LbPolicy):
            raise ValueError(f"lb_policy must be round_robin or p2c, not {self.lb_policy!r}")
        if not self.no_instance_wait_s > 0 or not self.drain_timeout_s >= 0:
            raise ValueError("no_instance_wait_s must be > 0 and drain_timeout_s >= 0")
        self.outlier  # validates the outlier fields  # noqa: B018

    @property
    def outlier(self) -> OutlierConfig:
        return OutlierConfig(
            consecutive_failures=self.outlier_consecutive_failures,
            base_ejection_s=self.outlier_base_ejection_s,
            max_ejection_s=max(self.outlier_max_ejection_s, self.outlier_base_ejection_s),
            max_ejected_fraction=self.outlier_max_ejected_fraction,
        )

    @classmethod
    def from_settings(
        cls, resilience: ResilienceSettings, overrides: Mapping[str, Any] | None = None
    ) -> ClientOptions:
        """Options from the settings, with `connect(**overrides)` on top (unknown names raise)."""
        values: dict[str, Any] = {
            "lb_policy": resilience.lb_policy,
            "outlier_consecutive_failures": resilience.outlier_consecutive_failures,
            "outlier_base_ejection_s": resilience.outlier_base_ejection_s,
            "outlier_max_ejection_s": resilience.outlier_max_ejection_s,
            "outlier_max_ejected_fraction": resilience.outlier_max_ejected_fraction,
            "no_instance_wait_s": resilience.default_deadline_s,
        }
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in (overrides or {}).items():
            if key not in names:
                raise TypeError(
                    f"unknown connect() option {key!r}; expected one of {', '.join(sorted(names))}"
                )
            if (
                key in ("channel_options", "interceptors", "extra_interceptors")
                and value is not None
            ):
                value = tuple(value)
            values[key] = value
        return cls(**values)

    def channel_args(self) -> list[tuple[str, Any]]:
        merged = dict(DEFAULT_CHANNEL_OPTIONS)
        merged.update(dict(self.channel_options))
        return list(merged.items())


def channel_factory(
    options: ClientOptions, service: str = ""
) -> Callable[[Instance], grpc.aio.Channel]:
    """Makes each instance's own grpc.aio channel.

    With an identity, every channel is made with the certificate current at that
    moment (a renewed one for connections opened after a rotation) and accepts
    only a server holding `service`'s certificate (its DNS SAN), whatever the
    registry said about the address.
    """
    args = options.channel_args()
    credentials = options.credentials
    identity = options.identity
    if identity is not None and credentials is None:
        tls_args = [*args, *identity.channel_options(service)]

        def make_mtls(instance: Instance) -> grpc.aio.Channel:
            return grpc.aio.secure_channel(
                instance.address, identity.channel_credentials(), options=tls_args
            )

        return make_mtls

    def make(instance: Instance) -> grpc.aio.Channel:
        if credentials is not None:
            return grpc.aio.secure_channel(instance.address, credentials, options=args)
        return grpc.aio.insecure_channel(instance.address, options=args)

    return make


def open_channel(
    service: str,
    registry: Registry,
    interceptors: Sequence[Any] = (),
    options: ClientOptions | None = None,
    *,
    on_ejection: EjectionHook | None = None,
    policies: PolicyWatcher | None = None,
) -> MeshChannel:
    """A MeshChannel to `service`'s healthy instances (call inside a running event loop).

    `interceptors` are grpc.aio client interceptors, outermost first. The
    channel starts watching the registry at once; close it with `await ch.close()`.
    With `policies`, the channel follows `service`'s traffic policy (subset weights).
    """
    opts = options or ClientOptions()
    pool = EndpointPool(
        service,
        registry,
        channel_factory(opts, service),
        lb_policy=opts.lb_policy,
        outlier=opts.outlier,
        drain_timeout_s=opts.drain_timeout_s,
        on_ejection=on_ejection,
    )
    if opts.identity is not None and opts.credentials is None:
        # A renewed certificate: new connections (with it) to every instance.
        pool.close_hooks.append(opts.identity.on_change(pool.reconnect))
    if policies is not None:
        pool.close_hooks.append(policies.subscribe(service, pool.set_policy))
    return MeshChannel(pool, interceptors, no_deadline_wait_s=opts.no_instance_wait_s)
