"""The Consul backend: agent API through py-consul's asyncio client.

* **Register** puts the instance on the local agent (`PUT /v1/agent/service/register`)
  with its id as the Consul service id, tags `v<version>` plus the proto packages
  from `meta["proto_packages"]`, `Meta` from `Instance.meta` (plus `version`),
  and one native gRPC health check (`GRPC: host:port` or
  `host:port/<meta["health_service"]>`, `Interval`, `Timeout`,
  `DeregisterCriticalServiceAfter`). The check's initial status is what this
  process sees from the instance's grpc.health.v1 endpoint right before
  registering, so a serving instance is visible at once instead of after the
  agent's first (staggered) check.
* **Healthy instances** come from `GET /v1/health/service/<name>?passing`;
  `watch()` chains blocking queries (`index` + `wait`, mesh/discovery/consul_watch.py),
  so a change arrives as soon as the agent sees it. If the returned index goes
  backwards (agent or cluster rebuilt) the watch starts over from index 0, as
  Consul documents.
* **TLS**: an `https://` address verifies the agent with `ca_file` (CONSUL_CACERT)
  or the system's CAs, and presents `client_cert`/`client_key`
  (CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY) when the agent verifies clients.
* **Rate**: each watch issues at most `watch_queries_per_s` queries a second on
  average (bursts pass), as Consul's blocking-query docs recommend.
* **ACLs**: the agent's 403 ("Permission denied", "ACL not found") is not an
  outage: it raises `ConsulAclError`, a configuration error naming the token
  settings (CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE), and is never retried.
  Reads the token may not make are filtered by Consul, not refused: a service
  the token cannot read looks like a service with no healthy instance.
* **Outages**: `healthy()` raises `RegistryUnavailable`; a watch keeps its last
  snapshot, logs once when the agent becomes unreachable and once when it is
  back, and retries with backoff. A background task re-registers this
  process's instances if the agent lost them (restarted without its data dir).

Real Consul clamps check intervals to at least 1 s and reaps critical services
no sooner than 1 minute after `DeregisterCriticalServiceAfter` is set (the reaper
runs every 30 s); the defaults here respect that. One registry object belongs to
one event loop (its aiohttp session is bound to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
import consul
import consul.aio
import consul.exceptions

from base.backoff import Backoff
from mesh.discovery.consul_watch import BlockingQueries, go_duration
from mesh.discovery.health_probe import ClientIdentity, HealthProbe
from mesh.discovery.lifecycle import Availability, Closed, Closer
from mesh.discovery.registry import Instance, RegistryUnavailable

log = logging.getLogger(__name__)

# What a failing agent call can raise: connection errors (aiohttp's are OSErrors
# too), our own timeouts, HTTP errors mapped by py-consul, malformed answers.
_AGENT_ERRORS = (
    OSError,
    aiohttp.ClientError,
    TimeoutError,
    consul.ConsulException,
    ValueError,
    KeyError,
    TypeError,
)
CheckStatus = Literal["passing", "warning", "critical"]
TOKEN_SETTINGS = "CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE"


class ConsulAclError(ValueError):
    """The agent refused the token (HTTP 403): a configuration error, not an outage."""


def _acl_error(what: str, exc: Exception) -> ConsulAclError:
    return ConsulAclError(
        f"consul refused to {what}: {exc} — check the ACL token ({TOKEN_SETTINGS}) and its"
        " policy (service:write on the service's own name; see the README's 'Consul ACL')"
    )


def read_token(token: str, token_file: str) -> str:
    """The ACL token from the settings: the value, or the first line of the file."""
    if token and token_file:
        raise ConsulAclError("set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE, not both")
    if not token_file:
        return token
    try:
        with open(token_file, encoding="utf-8") as f:
            value = f.readline().strip()
    except OSError as exc:
        raise ConsulAclError(f"CONSUL_HTTP_TOKEN_FILE={token_file}: {exc.strerror}") from None
    if not value:
        raise ConsulAclError(f"CONSUL_HTTP_TOKEN_FILE={token_file} is empty")
    return value


def parse_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) from CONSUL_HTTP_ADDR forms: host:port, http(s)://host:port."""
    raw = address.strip()
    if not raw:
        raise ValueError("empty Consul address")
    parts = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Consul address {address!r} must look like host:port or http://host:port")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"Consul address {address!r}: {exc}") from None
    return parts.scheme, parts.hostname, port or (8501 if parts.scheme == "https" else 8500)


def version_tag(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"


def _derived_tags(version: str, meta: Mapping[str, str]) -> list[str]:
    tags = [version_tag(version)] if version else []
    tags += [p.strip() for p in meta.get("proto_packages", "").split(",") if p.strip()]
    return tags


def service_tags(instance: Instance) -> list[str]:
    """Consul tags: the instance's own, its version tag and its proto packages."""
    return list(dict.fromkeys([*instance.tags, *_derived_tags(instance.version, instance.meta)]))


def service_meta(instance: Instance) -> dict[str, str]:
    meta = dict(instance.meta)
    if instance.version:
        meta["version"] = instance.version
    return meta


def grpc_check_target(instance: Instance) -> str:
    health_service = instance.meta.get("health_service", "")
    return f"{instance.address}/{health_service}" if health_service else instance.address


def instance_from_entry(entry: Mapping[str, Any]) -> Instance:
    """The Instance registered, rebuilt from one /v1/health/service entry."""
    svc = entry["Service"]
    node = entry.get("Node") or {}
    meta = {str(k): str(v) for k, v in (svc.get("Meta") or {}).items()}
    version = meta.pop("version", "")
    derived = set(_derived_tags(version, meta))
    return Instance(
        id=str(svc["ID"]),
        service=str(svc["Service"]),
        host=str(svc.get("Address") or node.get("Address") or ""),
        port=int(svc["Port"]),
        version=version,
        tags=tuple(str(t) for t in svc.get("Tags") or () if t not in derived),
        meta=meta,
    )


def _snapshot_key(instances: list[Instance]) -> list[tuple[Instance, list[tuple[str, str]]]]:
    return [(i, sorted(i.meta.items())) for i in instances]


class ConsulRegistry:
    """Registry on a Consul agent (`address` as in CONSUL_HTTP_ADDR)."""

    def __init__(
        self,
        address: str = "127.0.0.1:8500",
        token: str = "",
        *,
        datacenter: str | None = None,
        check_interval_s: float = 1.0,
        check_timeout_s: float = 1.0,
        deregister_critical_after_s: float = 60.0,
        probe_before_register: bool = True,
        blocking_wait_s: float = 30.0,
        request_timeout_s: float = 5.0,
        resync_interval_s: float = 15.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        ca_file: str = "",
        client_cert: str = "",
        client_key: str = "",
        watch_queries_per_s: float = 5.0,
        identity: ClientIdentity | None = None,
    ) -> None:
        self.address = address
        # mTLS on: the agent's gRPC check uses TLS and verifies the instance's name
        # (the agent holds a mesh identity of its own, `meshctl pki issue consul`).
        self.identity = identity
        self._scheme, self._host, self._port = parse_address(address)
        self._token = token
        self._dc = datacenter
        self._interval = go_duration(check_interval_s)
        self._check_timeout_s = check_timeout_s
        self._check_timeout = go_duration(check_timeout_s)
        self._deregister_after = go_duration(deregister_critical_after_s)
        self._probe_before_register = probe_before_register
        self._request_timeout_s = request_timeout_s
        self._resync_interval_s = resync_interval_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        if client_key and not client_cert:
            raise ValueError("a Consul client key needs its certificate (CONSUL_CLIENT_CERT)")
        self._verify: bool | str = ca_file or True
        self._cert = (client_cert, client_key) if client_key else (client_cert or None)
        self._blocking = BlockingQueries(
            wait_s=blocking_wait_s,
            request_timeout_s=request_timeout_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            queries_per_s=watch_queries_per_s,
        )
        self._consul: Any = None
        self._own: dict[str, Instance] = {}
        self._lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._closer = Closer()
        self._reads = Availability(f"consul agent {address}", log)
        self._writes = Availability(
            f"consul agent {address} (registrations)", log, "retrying the re-registration check"
        )

    def _client(self) -> Any:
        if self._closer.closed:
            raise RegistryUnavailable("registry is closed")
        if self._consul is None:
            with warnings.catch_warnings():
                # py-consul passes aiohttp's deprecated ssl_context argument.
                warnings.simplefilter("ignore", DeprecationWarning)
                client = consul.aio.Consul(
                    host=self._host,
                    port=self._port,
                    scheme=self._scheme,
                    verify=self._verify,
                    cert=self._cert,
                    dc=self._dc,
                )
            # py-consul lets CONSUL_HTTP_TOKEN override the argument; the settings
            # object already read that variable, so the explicit token wins here.
            client.token = self._token or None
            self._consul = client
        return self._consul

    # -- registration -----------------------------------------------------------

    def check_definition(self, instance: Instance, status: CheckStatus) -> dict[str, Any]:
        return {
            "CheckID": f"service:{instance.id}",
            "Name": f"gRPC health of {instance.service}",
            "GRPC": grpc_check_target(instance),
            "GRPCUseTLS": self.identity is not None,
            **(
                {"TLSServerName": self.identity.target_name(instance.service)}
                if self.identity is not None
                else {}
            ),
            "Interval": self._interval,
            "Timeout": self._check_timeout,
            "DeregisterCriticalServiceAfter": self._deregister_after,
            "Status": status,
        }

    async def _initial_status(self, instance: Instance) -> CheckStatus:
        if not self._probe_before_register:
            return "critical"
        probe = HealthProbe(
            instance.address,
            instance.meta.get("health_service", ""),
            self._check_timeout_s,
            identity=self.identity,
            callee=instance.service,
        )
        try:
            serving, _ = await probe.check()
        except Exception:  # unknown: let the agent's own check decide
            serving = False
        finally:
            await probe.close()
        return "passing" if serving else "critical"

    async def _put(self, instance: Instance, status: CheckStatus) -> None:
        client = self._client()
        call = client.agent.service.register(
            instance.service,
            service_id=instance.id,
            address=instance.host,
            port=instance.port,
            tags=service_tags(instance),
            meta=service_meta(instance),
            check=self.check_definition(instance, status),
            replace_existing_checks=True,
        )
        try:
            ok = await asyncio.wait_for(call, self._request_timeout_s)
        except consul.exceptions.ACLPermissionDenied as exc:
            raise _acl_error(f"register {instance.id} as {instance.service!r}", exc) from None
        except consul.exceptions.BadRequest as exc:
            raise ValueError(f"consul rejected {instance.id}: {exc}") from exc
        except _AGENT_ERRORS as exc:
            raise RegistryUnavailable(f"consul {self.address}: cannot register: {exc}") from exc
        if not ok:
            raise RegistryUnavailable(f"consul {self.address}: {instance.id} was not registered")

    async def register(self, instance: Instance) -> None:
        status = await self._initial_status(instance)
        async with self._lock:
            await self._put(instance, status)
            self._own[instance.id] = instance
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_registered(), name="consul-resync")

    async def deregister(self, instance_id: str) -> None:
        async with self._lock:
            self._own.pop(instance_id, None)
            call = self._client().agent.service.deregister(instance_id)
            try:
                # False means 404: an unknown id, which the protocol ignores.
                await asyncio.wait_for(call, self._request_timeout_s)
            except consul.exceptions.ACLPermissionDenied as exc:
                raise _acl_error(f"deregister {instance_id}", exc) from None
            except _AGENT_ERRORS as exc:
                raise RegistryUnavailable(
                    f"consul {self.address}: cannot deregister {instance_id}: {exc}"
                ) from exc

    async def _keep_registered(self) -> None:
        """Put our instances back if the agent lost them (restarted without state)."""
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        delay = self._resync_interval_s
        while True:
            try:
                await self._closer.sleep(delay)
            except Closed:
                return
            try:
                async with self._lock:
                    await self._resync()
            except ConsulAclError:
                log.exception("re-registration check refused by the agent's ACLs; stopped")
                return
            except (RegistryUnavailable, *_AGENT_ERRORS) as exc:
                self._writes.failed(exc)
                delay = backoff.next()
            except Exception:  # keep the keeper alive whatever happens
                log.exception("re-registration check failed")
                delay = backoff.next()
            else:
                self._writes.ok()
                backoff.reset()
                delay = self._resync_interval_s

    async def _resync(self) -> None:
        if not self._own:
            return
        try:
            call = self._client().agent.services()
            known = await asyncio.wait_for(call, self._request_timeout_s)
        except consul.exceptions.ACLPermissionDenied as exc:
            raise _acl_error("list its registered services", exc) from None
        for instance_id, instance in list(self._own.items()):
            if instance_id not in (known or {}):
                # Its current health is unknown: start critical, the agent's check decides.
                await self._put(instance, "critical")
                log.warning("re-registered %s: the consul agent had lost it", instance_id)

    # -- discovery ----------------------------------------------------------------

    async def _query(self, service: str, index: int) -> tuple[int, list[Instance]]:
        client = self._client()
        call = client.health.service(service, passing=True, **self._blocking.params(index))
        try:
            raw_index, entries = await asyncio.wait_for(call, self._blocking.timeout_s(index))
            instances = sorted((instance_from_entry(e) for e in entries or ()), key=lambda i: i.id)
            return int(raw_index), instances
        except consul.exceptions.ACLPermissionDenied as exc:
            raise _acl_error(f"list the instances of {service!r}", exc) from None
        except _AGENT_ERRORS as exc:
            raise RegistryUnavailable(f"consul {self.address}: {exc}") from exc

    async def healthy(self, service: str) -> list[Instance]:
        try:
            _, instances = await self._closer.run(self._query(service, 0))
        except Closed:
            raise RegistryUnavailable("registry is closed") from None
        except RegistryUnavailable as exc:
            self._reads.failed(exc)
            raise
        self._reads.ok()
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        last: list[tuple[Instance, list[tuple[str, str]]]] | None = None
        answers = self._blocking.follow(
            lambda index: self._query(service, index), self._closer, self._reads
        )
        async with contextlib.aclosing(answers):
            async for instances in answers:
                key = _snapshot_key(instances)
                if key != last:
                    last = key
                    yield instances

    async def close(self) -> None:
        self._closer.close()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        # Let watches cancel their in-flight blocking queries before the session goes.
        await asyncio.sleep(0)
        client, self._consul = self._consul, None
        if client is not None:
            await client.close()
