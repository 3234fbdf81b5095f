"""One typed settings object, read from the environment once and passed down.

Names follow the design: `MESH_*`, `NATS_URL`, `CONSUL_HTTP_ADDR`,
`<SERVICE>_DATABASE_URL` and the standard `OTEL_*` (read by the OpenTelemetry
SDK itself). A malformed value fails at start with `SettingsError` naming the
variable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

T = TypeVar("T")
RegistryKind = Literal["consul", "embedded", "none"]
LbPolicy = Literal["round_robin", "p2c"]


class SettingsError(ValueError):
    """A setting from the environment is malformed; the message names the variable."""


def _read(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T]) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535 (0 = any free port)")
    return value


def _ratio(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return parse


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Client-side call policy: deadlines, retries, breakers, outlier ejection."""

    default_deadline_s: float = 5.0
    retry_max_attempts: int = 3
    retry_budget_ratio: float = 0.2
    retry_initial_backoff_s: float = 0.05
    retry_max_backoff_s: float = 1.0
    breaker_failure_rate: float = 0.5
    breaker_min_calls: int = 10
    breaker_window_s: float = 10.0
    breaker_cooldown_s: float = 5.0
    breaker_half_open_calls: int = 3
    lb_policy: LbPolicy = "p2c"
    outlier_consecutive_failures: int = 5
    outlier_base_ejection_s: float = 5.0


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Identity and mTLS (mesh/security/): the mesh CA, this process's certificate, TLS on/off.

    `tls=False` (MESH_TLS=off) is for debugging and benchmarks only: every
    process logs a loud WARNING at start. `ca_cert_file`/`ca_key_file` name a
    user's own CA (default: `<pki_dir>/ca.crt` and `ca.key`, made by `meshctl pki init`).
    """

    tls: bool = True
    trust_domain: str = "mesh.local"
    pki_dir: str = ".run/pki"
    cert_lifetime_s: float = 24 * 3600.0
    ca_cert_file: str = ""
    ca_key_file: str = ""


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError("must be on or off")


def _trust_domain(raw: str) -> str:
    value = raw.strip().lower()
    if not value or "/" in value or ":" in value or value.startswith("."):
        raise ValueError("must be a DNS-like name such as mesh.local")
    return value


def security_from_env(e: Mapping[str, str]) -> SecuritySettings:
    """MESH_TLS, MESH_TRUST_DOMAIN, MESH_PKI_DIR, MESH_CERT_LIFETIME_S, MESH_CA_CERT_FILE,
    MESH_CA_KEY_FILE."""
    d = SecuritySettings()
    return SecuritySettings(
        tls=_read(e, "MESH_TLS", d.tls, _on_off),
        trust_domain=_read(e, "MESH_TRUST_DOMAIN", d.trust_domain, _trust_domain),
        pki_dir=_read(e, "MESH_PKI_DIR", d.pki_dir, str),
        cert_lifetime_s=_read(e, "MESH_CERT_LIFETIME_S", d.cert_lifetime_s, _positive_float),
        ca_cert_file=_read(e, "MESH_CA_CERT_FILE", d.ca_cert_file, str),
        ca_key_file=_read(e, "MESH_CA_KEY_FILE", d.ca_key_file, str),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service or client process reads from its environment."""

    service: str
    host: str = "127.0.0.1"
    # The address other processes reach this instance at (registered); defaults to host.
    advertise_host: str = ""
    grpc_port: int = 0
    admin_port: int = 0
    instance_id: str = ""
    version: str = "0.1.0"
    registry: RegistryKind = "embedded"
    registry_dir: str = ""
    consul_http_addr: str = ""
    consul_token: str = ""
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = ""
    # Where default SQLite files live (one per service): MESH_DATA_DIR.
    data_dir: str = ".run/data"
    drain_grace_s: float = 10.0
    log_level: str = "INFO"
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @classmethod
    def from_env(
        cls,
        service: str,
        env: Mapping[str, str] | None = None,
        *,
        grpc_port: int = 0,
        admin_port: int = 0,
        database_url: str = "",
    ) -> Settings:
        """Read the settings of `service`; the keyword arguments are its defaults."""
        e = os.environ if env is None else env
        host = _read(e, "MESH_HOST", "127.0.0.1", str)
        port = _read(e, "MESH_GRPC_PORT", grpc_port, _port)
        consul = _read(e, "CONSUL_HTTP_ADDR", "", str)
        registry_default: RegistryKind = "consul" if consul else "embedded"
        registry: str = _read(
            e, "MESH_REGISTRY", str(registry_default), _choice(get_args(RegistryKind))
        )
        if registry == "consul" and not consul:
            raise SettingsError("MESH_REGISTRY=consul needs CONSUL_HTTP_ADDR (e.g. 127.0.0.1:8500)")
        default_registry_dir = os.path.join(
            e.get("XDG_RUNTIME_DIR") or e.get("TMPDIR") or "/tmp", f"shop-mesh-{os.getuid()}"
        )
        db_var = f"{service.upper().replace('-', '_')}_DATABASE_URL"
        resilience = ResilienceSettings(
            default_deadline_s=_read(e, "MESH_DEFAULT_DEADLINE_S", 5.0, _positive_float),
            retry_max_attempts=_read(e, "MESH_RETRY_MAX_ATTEMPTS", 3, _positive_int),
            retry_budget_ratio=_read(e, "MESH_RETRY_BUDGET_RATIO", 0.2, _ratio),
            breaker_failure_rate=_read(e, "MESH_BREAKER_FAILURE_RATE", 0.5, _ratio),
            breaker_min_calls=_read(e, "MESH_BREAKER_MIN_CALLS", 10, _positive_int),
            breaker_window_s=_read(e, "MESH_BREAKER_WINDOW_S", 10.0, _positive_float),
            breaker_cooldown_s=_read(e, "MESH_BREAKER_COOLDOWN_S", 5.0, _positive_float),
            breaker_half_open_calls=_read(e, "MESH_BREAKER_HALF_OPEN_CALLS", 3, _positive_int),
            lb_policy=_read(e, "MESH_LB_POLICY", "p2c", _choice(get_args(LbPolicy))),  # type: ignore[arg-type]
            outlier_consecutive_failures=_read(
                e, "MESH_OUTLIER_CONSECUTIVE_FAILURES", 5, _positive_int
            ),
            outlier_base_ejection_s=_read(e, "MESH_OUTLIER_BASE_EJECTION_S", 5.0, _positive_float),
        )
        return cls(
            service=service,
            host=host,
            advertise_host=_read(e, "MESH_ADVERTISE_HOST", host, str),
            grpc_port=port,
            admin_port=_read(e, "MESH_ADMIN_PORT", admin_port, _port),
            instance_id=_read(e, "MESH_INSTANCE_ID", f"{service}-{uuid.uuid4().hex[:8]}", str),
            version=_read(e, "MESH_VERSION", "0.1.0", str),
            registry=registry,  # type: ignore[arg-type]
            registry_dir=_read(e, "MESH_REGISTRY_DIR", default_registry_dir, str),
            consul_http_addr=consul,
            consul_token=_read(e, "CONSUL_HTTP_TOKEN", "", str),
            nats_url=_read(e, "NATS_URL", "nats://127.0.0.1:4222", str),
            database_url=_read(e, db_var, database_url, str),
            data_dir=_read(e, "MESH_DATA_DIR", ".run/data", str),
            drain_grace_s=_read(e, "MESH_DRAIN_GRACE_S", 10.0, _positive_float),
            log_level=_read(
                e, "MESH_LOG_LEVEL", "INFO", _choice(("DEBUG", "INFO", "WARNING", "ERROR"))
            ),
            resilience=resilience,
            security=security_from_env(e),
        )
