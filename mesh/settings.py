"""The mesh's settings: one typed object, read from the environment once and passed down.

Names follow the design: `MESH_*`, `NATS_URL`, `CONSUL_HTTP_ADDR`,
`<SERVICE>_DATABASE_URL` and the standard `OTEL_*` (read by the OpenTelemetry
SDK itself, not listed here). A malformed value fails at start with
`SettingsError` naming the variable (`run_service` exits 2).

Adding a setting is one edit: a field at the END of `Settings` (or of
`ResilienceSettings` for client call policy) made with `setting(...)`:

    my_knob_s: float = setting("MESH_MY_KNOB_S", 2.0, number(above=True), "what it does")

`from_env` reads it, the error names it, and `python -m mesh.settings
--markdown` prints it in the README table (`make readme-settings` writes the
README; the contract test `tests/contract/test_settings_tables.py` fails until
then). A setting whose default is computed at start (like `grpc_port`) also
gets an entry in `from_env`'s `defaults` and a `shown_default=` for the table.
Parsers: `TEXT`, `PORT`, `RATIO`, `number(...)`, `whole(...)`, `choice(...)`,
or a `Parser(convert, rule, check)` of its own.
Code that needs the default elsewhere reads `RESILIENCE_DEFAULTS` or
`default_of(Settings, name)`, never writes the literal again. The machinery
(parsers, `load`, the table) is `base/settings.py`, shared with the services'
own settings (`services/<name>/config.py`).

Where each default is written: here, except for knobs of the interceptors
(retry, breaker, retry budget): `interceptors/` sits below `mesh/` and must not
import it, so their config dataclasses (`RetryPolicy`, `BreakerConfig`,
`RetryBudget`) hold those literals and the fields below take them with
`default_of(...)`. `ClientOptions` and `OutlierConfig` take theirs from
`RESILIENCE_DEFAULTS`.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from base.settings import (
    PORT,
    RATIO,
    TEXT,
    Parser,
    SettingsError,
    choice,
    default_of,
    load,
    main,
    markdown_table,
    number,
    read_field,
    setting,
    whole,
)
from interceptors.breaker import BreakerConfig
from interceptors.retry import RetryBudget, RetryPolicy
from mesh.edge.limits import EdgeLimits

__all__ = [
    "LOG_LEVELS",
    "RESILIENCE_DEFAULTS",
    "LbPolicy",
    "RegistryKind",
    "ResilienceSettings",
    "Settings",
    "SettingsError",
    "readme_tables",
]

RegistryKind = Literal["consul", "embedded", "none"]
LbPolicy = Literal["round_robin", "p2c"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_POSITIVE = number(above=True)
_AT_LEAST_ONE = whole(minimum=1)


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Client-side call policy: deadlines, retries, breakers, balancing, outlier ejection."""

    default_deadline_s: float = setting(
        "MESH_DEFAULT_DEADLINE_S",
        5.0,
        _POSITIVE,
        "deadline of a call that sets none; also how long such a call waits for an instance",
    )
    retry_max_attempts: int = setting(
        "MESH_RETRY_MAX_ATTEMPTS",
        default_of(RetryPolicy, "max_attempts"),
        _AT_LEAST_ONE,
        "attempts of a retryable call, the first included (1: no retries)",
    )
    retry_budget_ratio: float = setting(
        "MESH_RETRY_BUDGET_RATIO",
        default_of(RetryBudget, "ratio"),
        RATIO,
        "retries per called service stay under this share of its calls (plus 1/s)",
    )
    retry_initial_backoff_s: float = setting(
        "MESH_RETRY_INITIAL_BACKOFF_S",
        default_of(RetryPolicy, "initial_backoff_s"),
        _POSITIVE,
        "cap of the first retry's jittered pause (doubling per retry)",
    )
    retry_max_backoff_s: float = setting(
        "MESH_RETRY_MAX_BACKOFF_S",
        default_of(RetryPolicy, "max_backoff_s"),
        _POSITIVE,
        "largest cap of a retry's pause (raised to the initial one if lower)",
    )
    breaker_failure_rate: float = setting(
        "MESH_BREAKER_FAILURE_RATE",
        default_of(BreakerConfig, "failure_rate"),
        Parser(float, "a number above 0 and at most 1", lambda v: 0.0 < v <= 1.0),
        "a service's breaker opens at this failure share of its window",
    )
    breaker_min_calls: int = setting(
        "MESH_BREAKER_MIN_CALLS",
        default_of(BreakerConfig, "min_calls"),
        _AT_LEAST_ONE,
        "calls in the window before the breaker may open",
    )
    breaker_window_s: float = setting(
        "MESH_BREAKER_WINDOW_S",
        default_of(BreakerConfig, "window_s"),
        _POSITIVE,
        "the breaker's rolling window",
    )
    breaker_cooldown_s: float = setting(
        "MESH_BREAKER_COOLDOWN_S",
        default_of(BreakerConfig, "cooldown_s"),
        _POSITIVE,
        "an open breaker lets trial calls through after this",
    )
    breaker_half_open_calls: int = setting(
        "MESH_BREAKER_HALF_OPEN_CALLS",
        default_of(BreakerConfig, "half_open_calls"),
        _AT_LEAST_ONE,
        "trial calls that must succeed to close the breaker",
    )
    lb_policy: LbPolicy = setting(
        "MESH_LB_POLICY",
        "p2c",
        choice(get_args(LbPolicy)),
        "how a client picks an instance (`p2c`: the less loaded of two random ones)",
    )
    outlier_consecutive_failures: int = setting(
        "MESH_OUTLIER_CONSECUTIVE_FAILURES",
        5,
        _AT_LEAST_ONE,
        "UNAVAILABLE results in a row that eject an instance",
    )
    outlier_base_ejection_s: float = setting(
        "MESH_OUTLIER_BASE_EJECTION_S",
        5.0,
        _POSITIVE,
        "first ejection; the n-th recent one lasts n times this",
    )
    outlier_max_ejection_s: float = setting(
        "MESH_OUTLIER_MAX_EJECTION_S",
        300.0,
        _POSITIVE,
        "cap of the growing ejection (raised to the base one if lower)",
    )
    outlier_max_ejected_fraction: float = setting(
        "MESH_OUTLIER_MAX_EJECTED_FRACTION",
        0.5,
        RATIO,
        "never eject more than this share of a service's instances (one always may be)",
    )


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError("not on/off")


def _trust_domain(raw: str) -> str:
    value = raw.strip().lower()
    if not value or "/" in value or ":" in value or value.startswith("."):
        raise ValueError("not a trust domain")
    return value


_ON_OFF: Parser[bool] = Parser(_on_off, "on or off")
_TRUST_DOMAIN: Parser[str] = Parser(_trust_domain, "a DNS-like name such as mesh.local")


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Identity and mTLS (mesh/security/): the mesh CA, this process's certificate, TLS on/off.

    `tls=False` (MESH_TLS=off) is for debugging and benchmarks only: every
    process logs a loud WARNING at start. `ca_cert_file`/`ca_key_file` name a
    user's own CA (default: `<pki_dir>/ca.crt` and `ca.key`, made by `meshctl pki init`).
    """

    tls: bool = setting(
        "MESH_TLS", True, _ON_OFF, "mTLS on every hop; `off` only for debugging and benchmarks"
    )
    trust_domain: str = setting(
        "MESH_TRUST_DOMAIN",
        "mesh.local",
        _TRUST_DOMAIN,
        "identities are spiffe://<trust domain>/svc/<service>",
    )
    pki_dir: str = setting(
        "MESH_PKI_DIR", ".run/pki", TEXT, "the mesh CA and certificates (0700, keys 0600)"
    )
    cert_lifetime_s: float = setting(
        "MESH_CERT_LIFETIME_S", 24 * 3600.0, _POSITIVE, "lifetime of an instance certificate"
    )
    ca_cert_file: str = setting(
        "MESH_CA_CERT_FILE", "", TEXT, "your own CA certificate", shown_default="`<pki dir>/ca.crt`"
    )
    ca_key_file: str = setting(
        "MESH_CA_KEY_FILE", "", TEXT, "your own CA key", shown_default="`<pki dir>/ca.key`"
    )


def security_from_env(e: Mapping[str, str]) -> SecuritySettings:
    """The identity settings alone (MESH_TLS, MESH_TRUST_DOMAIN, MESH_PKI_DIR, ...)."""
    return load(SecuritySettings, e)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service or client process reads from its environment."""

    service: str
    host: str = setting(
        "MESH_HOST",
        "127.0.0.1",
        TEXT,
        "bind address for gRPC and admin (a wildcard is advertised as the host's address)",
    )
    advertise_host: str = setting(
        "MESH_ADVERTISE_HOST",
        "",
        TEXT,
        "the address other processes reach this instance at (registered)",
        shown_default="`MESH_HOST`",
    )
    grpc_port: int = setting(
        "MESH_GRPC_PORT",
        0,
        PORT,
        "gRPC port; 0: a free port (registered with the real one)",
        shown_default="the service's port",
    )
    admin_port: int = setting(
        "MESH_ADMIN_PORT",
        0,
        PORT,
        "admin HTTP port (`/health`, `/metrics`); 0: a free port",
        shown_default="the service's admin port",
    )
    instance_id: str = setting(
        "MESH_INSTANCE_ID",
        "",
        TEXT,
        "registry id; also the saga lease owner (a restart with the same id resumes its sagas)",
        shown_default="`<service>-<random>`",
    )
    version: str = setting("MESH_VERSION", "0.1.0", TEXT, "registered version, shown in `/health`")
    registry: RegistryKind = setting(
        "MESH_REGISTRY",
        "embedded",
        choice(get_args(RegistryKind)),
        "where instances register and are found",
        shown_default="`consul` when `CONSUL_HTTP_ADDR` is set, else `embedded`",
    )
    registry_dir: str = setting(
        "MESH_REGISTRY_DIR",
        "",
        TEXT,
        "directory of the embedded registry (0700, owned by the user)",
        shown_default="the running `meshctl up`'s (recorded per user), else "
        "`$XDG_RUNTIME_DIR/shop-mesh-<uid>` (or under `$TMPDIR`, `/tmp`)",
    )
    consul_http_addr: str = setting(
        "CONSUL_HTTP_ADDR", "", TEXT, "Consul agent address (`127.0.0.1:8500`)"
    )
    consul_token: str = setting("CONSUL_HTTP_TOKEN", "", TEXT, "Consul ACL token")
    consul_ca_file: str = setting(
        "CONSUL_CACERT", "", TEXT, "CA file that verifies an `https://` Consul agent"
    )
    consul_client_cert: str = setting(
        "CONSUL_CLIENT_CERT", "", TEXT, "client certificate for an agent that verifies clients"
    )
    consul_client_key: str = setting("CONSUL_CLIENT_KEY", "", TEXT, "its private key")
    nats_url: str = setting(
        "NATS_URL", "nats://127.0.0.1:4222", TEXT, "NATS server for events (JetStream)"
    )
    database_url: str = setting(
        "<SERVICE>_DATABASE_URL",
        "",
        TEXT,
        "the service's database (`postgresql://...` uses asyncpg)",
        shown_default="SQLite file under `MESH_DATA_DIR`",
    )
    data_dir: str = setting(
        "MESH_DATA_DIR", ".run/data", TEXT, "where default SQLite files live (one per service)"
    )
    drain_grace_s: float = setting(
        "MESH_DRAIN_GRACE_S", 10.0, _POSITIVE, "longest drain of in-flight calls at shutdown"
    )
    log_level: str = setting(
        "MESH_LOG_LEVEL",
        "INFO",
        choice(LOG_LEVELS),
        "log level; each module logs under its own name (`mesh.server`, "
        "`interceptors.logging` = the access log, `services.orders.saga`...)",
    )
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    # `meshctl up`'s local trace sink (OTLP/gRPC, loopback; 0 or busy: a free port) and
    # its bounds, and its dashboard (loopback; busy: a free port, printed).
    trace_sink_port: int = setting(
        "MESH_TRACE_SINK_PORT", 4317, PORT, "`meshctl up`'s local OTLP trace sink (0: a free port)"
    )
    trace_max_spans: int = setting(
        "MESH_TRACE_MAX_SPANS", 100_000, _AT_LEAST_ONE, "spans the local trace sink keeps"
    )
    trace_max_age_s: float = setting(
        "MESH_TRACE_MAX_AGE_S", 3600.0, _POSITIVE, "age after which the trace sink drops spans"
    )
    dashboard_port: int = setting(
        "MESH_DASHBOARD_PORT", 9900, PORT, "`meshctl up`'s dashboard on 127.0.0.1"
    )
    admin_token: str = setting(
        "MESH_ADMIN_TOKEN",
        "",
        TEXT,
        "bearer token of the admin port's actions (POST, e.g. retrying a parked saga); "
        "empty: actions refused (`meshctl up` makes one per run for its dashboard)",
    )
    # NATS credentials (mesh/events/nats_connect.py): an nkey seed file (what
    # `meshctl up` hands each service) or a .creds file, plus TLS material.
    nats_nkey_seed_file: str = setting(
        "NATS_NKEY_SEED_FILE", "", TEXT, "nkey seed file of this process's NATS identity"
    )
    nats_creds_file: str = setting("NATS_CREDS", "", TEXT, "NATS `.creds` file (JWT + seed)")
    nats_tls_ca_file: str = setting("NATS_TLS_CA_FILE", "", TEXT, "CA that verifies the server")
    nats_tls_cert_file: str = setting("NATS_TLS_CERT_FILE", "", TEXT, "NATS client certificate")
    nats_tls_key_file: str = setting("NATS_TLS_KEY_FILE", "", TEXT, "its private key")
    consul_token_file: str = setting(
        "CONSUL_HTTP_TOKEN_FILE", "", TEXT, "a file holding the Consul ACL token"
    )
    stream_max_bytes: int = setting(
        "MESH_STREAM_MAX_BYTES",
        256 * 1024 * 1024,
        _AT_LEAST_ONE,
        "size limit of each JetStream stream the service declares (oldest dropped first)",
    )
    stream_replicas: int = setting(
        "MESH_STREAM_REPLICAS",
        1,
        Parser(int, "a whole number from 1 to 5", lambda v: 1 <= v <= 5),
        "copies of each stream on a JetStream cluster (3 on the Kubernetes manifests' cluster)",
    )
    stream_max_msgs: int = setting(
        "MESH_STREAM_MAX_MSGS", 1_000_000, _AT_LEAST_ONE, "message limit of each stream"
    )
    track: str = setting(
        "MESH_TRACK",
        "",
        TEXT,
        "the instance's subset for traffic policies (`blue`, `green`...), registered as `track`",
        shown_default="`MESH_VERSION`",
    )
    access_log_every: int = setting(
        "MESH_ACCESS_LOG_EVERY",
        100,
        _AT_LEAST_ONE,
        "access log sampling: one line per N successful, fast calls (marked `sample=N`); "
        "every failed or slow call always gets its line; 1: every call",
    )
    access_log_slow_ms: float = setting(
        "MESH_ACCESS_LOG_SLOW_MS",
        100.0,
        _POSITIVE,
        "calls at least this long always get an access line",
    )
    gc_gen0_threshold: int = setting(
        "MESH_GC_GEN0_THRESHOLD",
        10_000,
        whole(minimum=0),
        "once serving, Python's GC skips what start-up made (`gc.freeze()`) and collects young "
        "objects every N allocations instead of 700 (`mesh/gc_tuning.py`); 0: Python's defaults",
    )
    db_pool_size: int = setting(
        "MESH_DB_POOL_SIZE",
        10,
        whole(minimum=1),
        "PostgreSQL connections a service process keeps open (SQLAlchemy's pool; up to 10 more "
        "while busy, closed when returned); SQLite files ignore it",
    )
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
        consul = read_field(cls, "consul_http_addr", e)
        defaults = {
            "advertise_host": read_field(cls, "host", e),
            "grpc_port": grpc_port,
            "admin_port": admin_port,
            "instance_id": f"{service}-{uuid.uuid4().hex[:8]}",
            "registry": "consul" if consul else "embedded",
            "database_url": database_url,
            "track": read_field(cls, "version", e),
        }
        settings = load(
            cls,
            e,
            for_service=service,
            defaults=defaults,
            service=service,
            resilience=load(ResilienceSettings, e),
            security=load(SecuritySettings, e),
        )
        if settings.registry == "consul" and not settings.consul_http_addr:
            raise SettingsError("MESH_REGISTRY=consul needs CONSUL_HTTP_ADDR (e.g. 127.0.0.1:8500)")
        return settings


RESILIENCE_DEFAULTS = ResilienceSettings()


def readme_tables() -> dict[str, str]:
    """The README's tables of the mesh-wide settings, by marker name."""
    return {
        "mesh": markdown_table([Settings, SecuritySettings]),
        "mesh-resilience": markdown_table([ResilienceSettings]),
        "mesh-edge": markdown_table([EdgeLimits]),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], readme_tables()))
