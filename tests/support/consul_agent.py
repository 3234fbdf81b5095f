"""A Consul-agent-shaped HTTP server for tests (a real Consul cannot be installed here).

It implements, after Consul's HTTP API documentation, the part of a single-node
dev agent that the mesh uses, and it really runs the health checks:

* `PUT /v1/agent/service/register` (`?replace-existing-checks`): Name, ID,
  Address, Port, Tags, Meta and `Check` / `Checks` with `GRPC` (+ `GRPCUseTLS`),
  `TTL`, `Interval`, `Timeout`, `DeregisterCriticalServiceAfter`, `Status`,
  `CheckID`, `Name`, `Notes`. Keys are matched without regard to case or
  underscores, as Consul's decoder does (py-consul sends lower-case keys).
* `PUT /v1/agent/service/deregister/:id` (404 for an unknown id),
  `PUT /v1/agent/check/{pass,warn,fail}/:id` (TTL checks).
* `GET /v1/health/service/:name` with `passing`, `tag`, and blocking
  `index` + `wait` (held until the service's index moves past `index` or
  `wait` + up to wait/16 of jitter elapses), answering `X-Consul-Index`.
* `GET /v1/agent/services`, `GET /v1/agent/checks`, `GET /v1/status/leader`.
* KV, one key at a time: `GET /v1/kv/:key` (a JSON list with base64 `Value`,
  `Flags`, `CreateIndex`, `ModifyIndex`, `LockIndex`; 404 when absent; blocking
  `index` + `wait` on the key's ModifyIndex, or on the KV table's index when the
  key is absent, as Consul does), `PUT /v1/kv/:key` (raw body, `?flags`, `?cas`:
  0 = only if absent, else only if ModifyIndex matches; answers `true`/`false`;
  bodies over 512 KiB are refused with 413) and `DELETE /v1/kv/:key` (`?cas`, a
  missing key deletes "successfully"). `?recurse`, `?keys`, `?acquire` and
  `?release` are not implemented (400, so a test cannot silently rely on them).
* gRPC checks: grpc.health.v1 Check on a fresh connection every `Interval`
  (first run staggered randomly within one interval, as Consul does), with
  `Timeout`; SERVING is passing, anything else critical. Status changes bump
  the index; a check critical for longer than `DeregisterCriticalServiceAfter`
  gets its service deregistered. TTL checks go critical when not updated.
* An optional ACL token: requests without it get 403 "ACL not found".
* As strict as Consul where a laxer fake could hide a bug: unknown JSON keys
  in a registration or check are refused (Consul decodes with
  `DisallowUnknownFields`); a wildcard service address (0.0.0.0, ::) is
  refused; boolean query flags parse like Go's `strconv.ParseBool` (present
  without a value is true, anything unparseable is a 400); re-registering a
  service id keeps the status and output its existing checks had (a
  registration's `Status` applies to new checks only).
* Optional ACL policies (`acl={token: AclPolicy}`), enforced as Consul does with
  `default_policy = "deny"`: registering, deregistering or updating a service
  needs `service:write` on its name (403 "Permission denied: ..."); reads are
  *filtered*, not refused: `/v1/health/service/:name` answers `[]` and
  `/v1/agent/services|checks` leave out what the token may not read, with
  `X-Consul-Results-Filtered-By-ACLs: true`. No token is the anonymous token
  (no rights); a token the agent does not know gets 403 "ACL not found".
  KV reads and writes need `key_prefix` read / write on the key: without it the
  request is refused with 403 "Permission denied" (single-key KV requests are
  refused, not filtered).

Deliberate differences from a real agent, to keep tests fast: intervals
below 1 s and DeregisterCriticalServiceAfter below 1 min are honoured (Consul
clamps them) and the reaper runs every `reap_interval_s` (Consul: 30 s).

`stop()` / `start()` / `restart()` simulate the agent going away and coming
back on the same port: services and checks survive (Consul persists them in its
data dir) unless `restart(keep_state=False)`, which also resets the index like a
fresh dev agent (`wipe()` does that without a restart). While stopped, no checks
run and connections are refused.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ipaddress
import json
import random
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_STATUSES = ("passing", "warning", "critical")
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
# The fields of Consul's api.AgentServiceRegistration and api.AgentServiceCheck,
# normalised as `_norm` does (Consul matches keys case-insensitively and accepts
# snake_case); anything else is "unknown field".
_SERVICE_KEYS = frozenset(
    _k.replace("_", "").lower()
    for _k in (
        "Kind",
        "ID",
        "Name",
        "Tags",
        "Port",
        "Address",
        "SocketPath",
        "TaggedAddresses",
        "EnableTagOverride",
        "Meta",
        "Weights",
        "Check",
        "Checks",
        "Proxy",
        "Connect",
        "Namespace",
        "Partition",
        "Locality",
    )
)
_CHECK_KEYS = frozenset(
    _k.replace("_", "").lower()
    for _k in (
        "CheckID",
        "ID",
        "Name",
        "Args",
        "ScriptArgs",
        "DockerContainerID",
        "Shell",
        "Interval",
        "Timeout",
        "TTL",
        "HTTP",
        "Header",
        "Method",
        "Body",
        "TCP",
        "TCPUseTLS",
        "UDP",
        "Status",
        "Notes",
        "TLSServerName",
        "TLSSkipVerify",
        "GRPC",
        "GRPCUseTLS",
        "H2PING",
        "H2PingUseTLS",
        "AliasNode",
        "AliasService",
        "SuccessBeforePassing",
        "FailuresBeforeWarning",
        "FailuresBeforeCritical",
        "DeregisterCriticalServiceAfter",
        "OutputMaxSize",
        "OSService",
        "ServiceID",
        "DisableRedirects",
        "Type",
    )
)
_MAX_WAIT_S = 600.0
_MAX_KV_VALUE = 512 * 1024


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """What one token may do: `service "<name>" { policy = "write" | "read" }` rules
    (exact names; write implies read) and `key_prefix "<p>" { policy = "read" | "write" }`."""

    service_write: tuple[str, ...] = ()
    service_read: tuple[str, ...] = ()
    key_read: tuple[str, ...] = ()
    key_write: tuple[str, ...] = ()

    def may_read_key(self, key: str) -> bool:
        return any(key.startswith(p) for p in (*self.key_read, *self.key_write))

    def may_write_key(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.key_write)

    def may_write(self, service: str) -> bool:
        return service in self.service_write

    def may_read(self, service: str) -> bool:
        return service in self.service_write or service in self.service_read


ANONYMOUS = AclPolicy()
_FILTERED = {"X-Consul-Results-Filtered-By-ACLs": "true"}
_ACL = web.RequestKey("acl", AclPolicy)


class PermissionDenied(Exception):
    """A write the request's token may not make (403, as Consul answers it)."""


class BadRequest(Exception):
    """A 400 answer, with Consul's style of message."""


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration ("10s", "1m30s", "250ms"); BadRequest when invalid."""
    raw = text.strip()
    if raw in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(raw):
        raise BadRequest(f'time: invalid duration "{text}"')
    return total


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _refuse_unknown(body: Mapping[str, Any], known: frozenset[str]) -> None:
    for key in body:
        if _norm(key) not in known:
            raise BadRequest(f'Request decode failed: json: unknown field "{key}"')


def _flag(query: Mapping[str, str], name: str) -> bool:
    """A boolean query flag as Consul parses it (`?passing` alone means true)."""
    if name not in query:
        return False
    raw = query[name]
    if raw == "":
        return True
    if raw not in _GO_BOOLS:
        raise BadRequest(f"Invalid value for ?{name}: {raw!r}")
    return _GO_BOOLS[raw]


def _field(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Consul decodes JSON keys case-insensitively and accepts snake_case."""
    want = _norm(name)
    for key, value in body.items():
        if _norm(key) == want:
            return value
    return default


def _duration_field(body: Mapping[str, Any], name: str) -> float:
    value = _field(body, name)
    if value is None or value == "":
        return 0.0
    if isinstance(value, int | float):
        return float(value) / 1e9  # Consul also takes integer nanoseconds
    if not isinstance(value, str):
        raise BadRequest(f"{name}: expected a duration")
    return parse_go_duration(value)


def _go(seconds: float) -> str:
    if seconds <= 0:
        return ""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass
class AgentService:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    create_index: int
    modify_index: int


@dataclass
class KvEntry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int


@dataclass
class AgentCheck:
    id: str
    name: str
    service_id: str
    service_name: str
    kind: str  # "grpc" | "ttl"
    grpc: str = ""
    grpc_use_tls: bool = False
    tls_server_name: str = ""
    interval_s: float = 0.0
    timeout_s: float = 10.0
    ttl_s: float = 0.0
    deregister_after_s: float = 0.0
    status: str = "critical"
    output: str = ""
    notes: str = ""
    critical_since: float | None = None
    ttl_deadline: float = 0.0
    runs: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AgentTls:
    """The agent's `tls { defaults { ca_file cert_file key_file } }`: what its TLS checks use."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


async def grpc_health_check(
    target: str,
    use_tls: bool,
    timeout_s: float,
    tls: AgentTls | None = None,
    server_name: str = "",
) -> tuple[bool, str]:
    """Consul's gRPC check: "host:port[/service]", a new connection each time.

    With GRPCUseTLS the agent's TLS config supplies the CA and its client
    certificate (system roots and none without one); TLSServerName is the
    name the server's certificate must carry.
    """
    address, _, service = target.partition("/")
    if use_tls:
        creds = (
            grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
            if tls is not None
            else grpc.ssl_channel_credentials()
        )
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(address, creds, options=options)
    else:
        channel = grpc.aio.insecure_channel(address)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        return False, f"gRPC check {target}: failed: {exc.code().name} {exc.details() or ''}"
    finally:
        await channel.close(None)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return True, f"gRPC check {target}: success"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return False, f"gRPC check {target}: failed with status {name}"


class ConsulTestAgent:
    """One fake agent on `host` (127.0.0.1 by default; port chosen by the kernel unless
    given, kept across restarts)."""

    def __init__(
        self,
        *,
        token: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        acl: Mapping[str, AclPolicy] | None = None,
        node: str = "test-agent",
        datacenter: str = "dc1",
        reap_interval_s: float = 0.05,
        tls: AgentTls | None = None,
    ) -> None:
        self.token = token
        self.host = host
        self.ssl_context = ssl_context
        self.acl = dict(acl) if acl is not None else None
        self.tls = tls
        self.node = node
        self.node_id = str(uuid.uuid4())
        self.datacenter = datacenter
        self.port = port
        self.calls: collections.Counter[str] = collections.Counter()
        self.registrations: list[dict[str, Any]] = []  # raw request bodies, for assertions
        self._reap_interval_s = reap_interval_s
        self._services: dict[str, AgentService] = {}
        self._checks: dict[str, AgentCheck] = {}
        self._index = 1
        self._service_index: dict[str, int] = {}
        self._kv: dict[str, KvEntry] = {}
        self._kv_index = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------

    @property
    def address(self) -> str:
        """host:port (https://host:port when serving TLS), as in CONSUL_HTTP_ADDR."""
        scheme = "https://" if self.ssl_context is not None else ""
        return f"{scheme}{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._acl])
        app.add_routes(
            [
                web.put("/v1/agent/service/register", self._register),
                web.put("/v1/agent/service/deregister/{id}", self._deregister),
                web.put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._update_ttl),
                web.get("/v1/health/service/{name}", self._health_service),
                web.get("/v1/agent/services", self._agent_services),
                web.get("/v1/agent/checks", self._agent_checks),
                web.get("/v1/status/leader", self._leader),
                web.get("/v1/kv/{key:.+}", self._kv_get),
                web.put("/v1/kv/{key:.+}", self._kv_put),
                web.delete("/v1/kv/{key:.+}", self._kv_delete),
            ]
        )
        # A short shutdown timeout: held blocking queries are cut, as when an agent dies.
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await site.start()
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        for check in self._checks.values():
            self._start_check(check)
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        tasks = [t for t in (self._reaper, *(c.task for c in self._checks.values())) if t]
        self._reaper = None
        for check in self._checks.values():
            check.task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await runner.cleanup()

    async def restart(self, *, keep_state: bool = True) -> None:
        await self.stop()
        if not keep_state:
            self.wipe()
        await self.start()

    def wipe(self) -> None:
        """Forget every service and check and start the index over, without dropping
        connections: an agent whose cluster was rebuilt. Held queries keep waiting."""
        for check_id in list(self._checks):
            self._drop_check(check_id)
        self._services.clear()
        self._service_index.clear()
        self._kv.clear()
        self._kv_index = 0
        self._index = 1

    # -- state --------------------------------------------------------------------

    def service_index(self, name: str) -> int:
        return max(self._service_index.get(name, 0), 1)

    def _bump(self, *names: str) -> int:
        self._index += 1
        for name in names:
            self._service_index[name] = self._index
        self._changed.set()
        self._changed = asyncio.Event()
        return self._index

    def _start_check(self, check: AgentCheck) -> None:
        if check.kind == "grpc" and self._runner is not None:
            check.task = asyncio.create_task(self._run_grpc_check(check))

    def _drop_check(self, check_id: str) -> None:
        check = self._checks.pop(check_id, None)
        if check is not None and check.task is not None:
            check.task.cancel()

    def _set_status(self, check: AgentCheck, status: str, output: str) -> None:
        check.output = output
        if status == check.status:
            return  # Consul syncs output-only changes lazily: no index bump
        check.status = status
        check.critical_since = time.monotonic() if status == "critical" else None
        self._bump(check.service_name)

    async def _run_grpc_check(self, check: AgentCheck) -> None:
        await asyncio.sleep(random.uniform(0, check.interval_s))  # poll: Consul staggers first runs
        while True:
            ok, output = await grpc_health_check(
                check.grpc, check.grpc_use_tls, check.timeout_s, self.tls, check.tls_server_name
            )
            check.runs += 1
            self._set_status(check, "passing" if ok else "critical", output)
            await asyncio.sleep(check.interval_s)  # poll: the check's interval, as an agent runs it

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)  # poll: the agent's reap period
            now = time.monotonic()
            for check in list(self._checks.values()):
                if check.kind == "ttl" and now > check.ttl_deadline:
                    self._set_status(check, "critical", "TTL expired")
                if (
                    check.deregister_after_s > 0
                    and check.critical_since is not None
                    and now - check.critical_since > check.deregister_after_s
                    and check.service_id in self._services
                ):
                    self._remove_service(check.service_id)

    def _remove_service(self, service_id: str) -> None:
        svc = self._services.pop(service_id)
        for check_id in [c.id for c in self._checks.values() if c.service_id == service_id]:
            self._drop_check(check_id)
        self._bump(svc.name)

    # -- HTTP ---------------------------------------------------------------------

    @web.middleware
    async def _acl(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        self.calls[f"{request.method} {resource.canonical if resource else request.path}"] += 1
        given = request.headers.get("X-Consul-Token") or request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = given or auth.removeprefix("Bearer ")
        if self.token and given != self.token:
            return web.Response(status=403, text="ACL not found")
        if self.acl is not None:
            if given and given not in self.acl:
                return web.Response(status=403, text="ACL not found")
            request[_ACL] = self.acl.get(given, ANONYMOUS)
        try:
            response: web.StreamResponse = await handler(request)
        except BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        except PermissionDenied as exc:
            return web.Response(status=403, text=f"Permission denied: {exc}")
        return response

    @staticmethod
    def _policy(request: web.Request) -> AclPolicy | None:
        """The request's ACL policy, or None when ACLs are off."""
        return request.get(_ACL)

    def _require_write(self, request: web.Request, service: str) -> None:
        policy = self._policy(request)
        if policy is not None and not policy.may_write(service):
            raise PermissionDenied(f"token lacks permission 'service:write' on {service!r}")

    def _readable(self, request: web.Request, service: str) -> bool:
        policy = self._policy(request)
        return policy is None or policy.may_read(service)

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise BadRequest("Request decode failed: invalid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("Request decode failed: expected an object")
        self.registrations.append(body)
        _refuse_unknown(body, _SERVICE_KEYS)
        name = _field(body, "Name") or ""
        if not isinstance(name, str) or not name:
            raise BadRequest("Missing service name")
        self._require_write(request, name)
        service_id = _field(body, "ID") or name
        port = _field(body, "Port", 0)
        if not isinstance(port, int):
            raise BadRequest("Request decode failed: Port must be a number")
        tags = _field(body, "Tags") or []
        meta = _field(body, "Meta") or {}
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadRequest("Request decode failed: Tags must be a list of strings")
        self._validate_meta(meta)
        address = str(_field(body, "Address") or "")
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(address).is_unspecified:
                raise BadRequest(f"Invalid Service Address {address!r}: a wildcard address")
        defs: list[Any] = []
        if _field(body, "Check"):
            defs.append(_field(body, "Check"))
        defs.extend(_field(body, "Checks") or [])
        checks = [self._check_from(d, i, len(defs), service_id, name) for i, d in enumerate(defs)]

        old = self._services.get(service_id)
        index = self._index + 1
        self._services[service_id] = AgentService(
            id=service_id,
            name=name,
            address=address,
            port=port,
            tags=list(tags),
            meta=dict(meta),
            create_index=old.create_index if old else index,
            modify_index=index,
        )
        replace = _flag(request.query, "replace-existing-checks")
        keep = {c.id for c in checks}
        for check in checks:  # a re-registered check keeps what the agent knew of it
            previous = self._checks.get(check.id)
            if previous is not None and previous.service_id == service_id:
                check.status, check.output = previous.status, previous.output
                check.critical_since = previous.critical_since
        for check in list(self._checks.values()):
            if check.service_id == service_id and (check.id in keep or replace):
                self._drop_check(check.id)
        for check in checks:
            self._checks[check.id] = check
            self._start_check(check)
        self._bump(name, *([old.name] if old and old.name != name else []))
        return web.Response(status=200)

    def _validate_meta(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            raise BadRequest("Invalid Service Meta: expected an object")
        if len(meta) > 64:
            raise BadRequest("Invalid Service Meta: Node metadata cannot contain more than 64 key")
        for key, value in meta.items():
            if not _meta_key_ok(key):
                raise BadRequest(f"Invalid Service Meta: Key contains invalid characters: {key}")
            if not isinstance(value, str) or len(value) > 512:
                raise BadRequest(f"Invalid Service Meta: Value is too long (limit: 512): {key}")

    def _check_from(
        self, d: Any, n: int, count: int, service_id: str, service_name: str
    ) -> AgentCheck:
        if not isinstance(d, dict):
            raise BadRequest("Request decode failed: a check must be an object")
        _refuse_unknown(d, _CHECK_KEYS)
        default_id = f"service:{service_id}" if count == 1 else f"service:{service_id}:{n + 1}"
        status = _field(d, "Status") or "critical"
        if status not in _STATUSES:
            raise BadRequest(f"Status must be 'passing', 'warning' or 'critical', got {status!r}")
        check = AgentCheck(
            id=str(_field(d, "CheckID") or _field(d, "ID") or default_id),
            name=str(_field(d, "Name") or f"Service '{service_name}' check"),
            service_id=service_id,
            service_name=service_name,
            kind="",
            notes=str(_field(d, "Notes") or ""),
            deregister_after_s=_duration_field(d, "DeregisterCriticalServiceAfter"),
            status=status,
            critical_since=time.monotonic() if status == "critical" else None,
        )
        grpc_target = _field(d, "GRPC")
        ttl = _duration_field(d, "TTL")
        if grpc_target:
            interval = _duration_field(d, "Interval")
            if interval <= 0:
                raise BadRequest(
                    "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks"
                )
            check.kind, check.grpc, check.interval_s = "grpc", str(grpc_target), interval
            check.grpc_use_tls = bool(_field(d, "GRPCUseTLS", False))
            check.tls_server_name = str(_field(d, "TLSServerName", "") or "")
            check.timeout_s = _duration_field(d, "Timeout") or 10.0
        elif ttl > 0:
            check.kind, check.ttl_s = "ttl", ttl
            check.ttl_deadline = time.monotonic() + ttl
        else:
            raise BadRequest("Invalid check: TTL or GRPC/Interval needed (test agent)")
        return check

    async def _deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if service_id not in self._services:
            return web.Response(
                status=404,
                text=f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        self._require_write(request, self._services[service_id].name)
        self._remove_service(service_id)
        return web.Response(status=200)

    async def _update_ttl(self, request: web.Request) -> web.Response:
        check = self._checks.get(request.match_info["id"])
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        self._require_write(request, check.service_name)
        if check.kind != "ttl":
            raise BadRequest(f"CheckID {check.id!r} does not have associated TTL")
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[
            request.match_info["verb"]
        ]
        check.ttl_deadline = time.monotonic() + check.ttl_s
        self._set_status(check, status, request.query.get("note", ""))
        return web.Response(status=200)

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        q = request.query
        try:
            index = int(q.get("index", "0") or "0")
        except ValueError:
            raise BadRequest("Invalid index") from None
        wait_s = parse_go_duration(q["wait"]) if q.get("wait") else 300.0
        if index > 0:
            await self._block(name, index, min(wait_s, _MAX_WAIT_S))
        passing = _flag(q, "passing")
        want_tags = q.getall("tag", [])
        entries = []
        readable = self._readable(request, name)
        for svc in sorted(self._services.values(), key=lambda s: s.id):
            if not readable or svc.name != name or not all(t in svc.tags for t in want_tags):
                continue
            checks = [c for c in self._checks.values() if c.service_id == svc.id]
            if passing and any(c.status != "passing" for c in checks):
                continue
            entries.append(self._health_entry(svc, checks))
        return web.json_response(
            entries,
            headers={
                "X-Consul-Index": str(self.service_index(name)),
                "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0",
                **({} if readable else _FILTERED),
            },
        )

    async def _block(self, name: str, index: int, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s + random.uniform(0, wait_s / 16)
        while self.service_index(name) <= index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _node_json(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.node,
            "Address": "127.0.0.1",
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _service_json(self, svc: AgentService) -> dict[str, Any]:
        return {
            "ID": svc.id,
            "Service": svc.name,
            "Tags": list(svc.tags),
            "Address": svc.address,
            "Meta": dict(svc.meta),
            "Port": svc.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Datacenter": self.datacenter,
            "CreateIndex": svc.create_index,
            "ModifyIndex": svc.modify_index,
        }

    def _check_json(self, check: AgentCheck) -> dict[str, Any]:
        svc = self._services.get(check.service_id)
        return {
            "Node": self.node,
            "CheckID": check.id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "ServiceTags": list(svc.tags) if svc else [],
            "Type": check.kind,
            "Interval": _go(check.interval_s),
            "Timeout": _go(check.timeout_s) if check.kind == "grpc" else "",
            "Definition": {
                "GRPC": check.grpc,
                "GRPCUseTLS": check.grpc_use_tls,
                "Interval": _go(check.interval_s),
                "Timeout": _go(check.timeout_s) if check.kind == "grpc" else "",
                "TTL": _go(check.ttl_s),
                "DeregisterCriticalServiceAfter": _go(check.deregister_after_s),
            },
        }

    def _health_entry(self, svc: AgentService, checks: list[AgentCheck]) -> dict[str, Any]:
        serf = {
            "Node": self.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
        }
        return {
            "Node": self._node_json(),
            "Service": self._service_json(svc),
            "Checks": [serf, *(self._check_json(c) for c in checks)],
        }

    async def _agent_services(self, request: web.Request) -> web.Response:
        shown = [s for s in self._services.values() if self._readable(request, s.name)]
        headers = _FILTERED if len(shown) < len(self._services) else {}
        return web.json_response({s.id: self._service_json(s) for s in shown}, headers=headers)

    async def _agent_checks(self, request: web.Request) -> web.Response:
        shown = [c for c in self._checks.values() if self._readable(request, c.service_name)]
        headers = _FILTERED if len(shown) < len(self._checks) else {}
        return web.json_response({c.id: self._check_json(c) for c in shown}, headers=headers)

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    # -- KV -----------------------------------------------------------------------

    def kv_value(self, key: str) -> bytes | None:
        """The stored value of `key` (for assertions), None when absent."""
        entry = self._kv.get(key)
        return None if entry is None else entry.value

    def _key_index(self, key: str) -> int:
        entry = self._kv.get(key)
        return entry.modify_index if entry is not None else max(self._kv_index, 1)

    def _kv_key(self, request: web.Request, write: bool) -> str:
        for unsupported in ("recurse", "keys", "acquire", "release", "separator"):
            if unsupported in request.query:
                raise BadRequest(f"?{unsupported} is not implemented by the test agent")
        key = request.match_info["key"]
        policy = self._policy(request)
        if policy is not None:
            allowed = policy.may_write_key(key) if write else policy.may_read_key(key)
            if not allowed:
                raise PermissionDenied(
                    f"token lacks permission 'key:{'write' if write else 'read'}' on {key!r}"
                )
        return key

    def _kv_touch(self, key: str) -> int:
        self._index += 1
        self._kv_index = self._index
        self._changed.set()
        self._changed = asyncio.Event()
        return self._index

    @staticmethod
    def _cas(request: web.Request) -> int | None:
        raw = request.query.get("cas")
        if raw is None:
            return None
        try:
            cas = int(raw)
        except ValueError:
            raise BadRequest(f"Invalid CAS index: {raw!r}") from None
        if cas < 0:
            raise BadRequest(f"Invalid CAS index: {raw!r}")
        return cas

    async def _kv_get(self, request: web.Request) -> web.Response:
        key = self._kv_key(request, write=False)
        q = request.query
        try:
            index = int(q.get("index", "0") or "0")
        except ValueError:
            raise BadRequest("Invalid index") from None
        wait_s = parse_go_duration(q["wait"]) if q.get("wait") else 300.0
        if index > 0:
            loop = asyncio.get_running_loop()
            wait_s = min(wait_s, _MAX_WAIT_S)
            deadline = loop.time() + wait_s + random.uniform(0, wait_s / 16)
            while self._key_index(key) <= index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        headers = {
            "X-Consul-Index": str(self._key_index(key)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
        entry = self._kv.get(key)
        if entry is None:
            return web.Response(status=404, headers=headers)
        doc = {
            "LockIndex": 0,
            "Key": key,
            "Flags": entry.flags,
            "Value": base64.b64encode(entry.value).decode() if entry.value else None,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
        }
        return web.json_response([doc], headers=headers)

    async def _kv_put(self, request: web.Request) -> web.Response:
        key = self._kv_key(request, write=True)
        cas = self._cas(request)
        raw_flags = request.query.get("flags", "0") or "0"
        try:
            flags = int(raw_flags)
        except ValueError:
            raise BadRequest(f"Invalid flags: {raw_flags!r}") from None
        body = await request.read()
        if len(body) > _MAX_KV_VALUE:
            return web.Response(
                status=413,
                text=f"Request body(len={len(body)}) too large, max size: {_MAX_KV_VALUE} bytes",
            )
        existing = self._kv.get(key)
        if cas is not None and (
            (cas == 0 and existing is not None)
            or (cas != 0 and (existing is None or existing.modify_index != cas))
        ):
            return web.json_response(False)
        index = self._kv_touch(key)
        create = existing.create_index if existing is not None else index
        self._kv[key] = KvEntry(body, flags, create, index)
        return web.json_response(True)

    async def _kv_delete(self, request: web.Request) -> web.Response:
        key = self._kv_key(request, write=True)
        cas = self._cas(request)
        existing = self._kv.get(key)
        if cas is not None and (existing is None or existing.modify_index != cas):
            return web.json_response(existing is None)
        if existing is not None:
            del self._kv[key]
            self._kv_touch(key)
        return web.json_response(True)


def _meta_key_ok(key: object) -> bool:
    return (
        isinstance(key, str)
        and 0 < len(key) <= 128
        and bool(_META_KEY.match(key))
        and not key.startswith("consul-")
    )


@contextlib.asynccontextmanager
async def consul_test_agent(**options: Any) -> AsyncIterator[ConsulTestAgent]:
    """A started agent, always stopped afterwards."""
    agent = ConsulTestAgent(**options)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
