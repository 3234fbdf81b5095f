"""Traffic policies in Consul KV: the key `shop-mesh/traffic/<service>` holds the policy's JSON.

* **Read / watch**: `GET /v1/kv/<key>`; `watch()` chains blocking queries (`index`
  + `wait`) with the registry's loop (mesh/discovery/consul_watch.py), so a change
  arrives as soon as the agent has it, rate-limited (Consul's advice) and starting
  over from index 0 when the index goes backwards. A missing key is "no policy"
  (404, whose `X-Consul-Index` is still a valid index to block on). A malformed
  value is logged and skipped.
* **Write**: `put(policy, expected_revision)` reads the key, compares the stored
  policy's `revision` with the expected one, then writes with `?cas=<ModifyIndex>`
  (0: only if the key is still absent): a writer that raced us makes Consul answer
  `false`, which becomes `PolicyConflict` after reading the winner's revision.
  The revision in the JSON is the policy's own counter (what `meshctl` shows and
  `expected_revision` names); ModifyIndex is only the CAS token.
* **ACLs**: the token needs `key_prefix "shop-mesh/traffic/" { policy = "read" }`
  to follow policies and `write` to change them; a refusal is `ConsulAclError`
  (a configuration error, never retried by `put`; a watch logs it and retries).

One store object belongs to one event loop (its aiohttp session is bound to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Any

import consul
import consul.aio
import consul.exceptions

from mesh.discovery.consul import _AGENT_ERRORS, ConsulAclError, ConsulRegistry, parse_address
from mesh.discovery.consul_watch import BlockingQueries
from mesh.discovery.embedded import check_name
from mesh.discovery.lifecycle import Availability, Closed, Closer
from mesh.discovery.registry import RegistryUnavailable
from mesh.traffic.policy import InvalidPolicy, PolicyConflict, TrafficPolicy

log = logging.getLogger(__name__)

KEY_PREFIX = "shop-mesh/traffic/"


def key_of(service: str) -> str:
    check_name("service", service)
    return f"{KEY_PREFIX}{service}"


class ConsulPolicyStore:
    """PolicyStore on a Consul agent's KV (see the module docstring)."""

    def __init__(
        self,
        address: str = "127.0.0.1:8500",
        token: str = "",
        *,
        datacenter: str | None = None,
        verify: bool | str = True,
        cert: Any = None,
        blocking_wait_s: float = 30.0,
        request_timeout_s: float = 5.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        watch_queries_per_s: float = 5.0,
    ) -> None:
        self.address = address
        self._scheme, self._host, self._port = parse_address(address)
        self._token = token
        self._dc = datacenter
        self._verify = verify
        self._cert = cert
        self._request_timeout_s = request_timeout_s
        self._blocking = BlockingQueries(
            wait_s=blocking_wait_s,
            request_timeout_s=request_timeout_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            queries_per_s=watch_queries_per_s,
        )
        self._consul: Any = None
        self._closer = Closer()
        self._reads = Availability(
            f"consul agent {address} (traffic policies)", log, "keeping the last policy; retrying"
        )

    @classmethod
    def like(cls, registry: ConsulRegistry, **options: Any) -> ConsulPolicyStore:
        """A store on the same agent, with the same token and TLS, as `registry`."""
        return cls(
            registry.address,
            registry._token,
            datacenter=registry._dc,
            verify=registry._verify,
            cert=registry._cert,
            **options,
        )

    def describe(self) -> str:
        return f"consul {self.address} KV {KEY_PREFIX}<service>"

    def _client(self) -> Any:
        if self._closer.closed:
            raise RegistryUnavailable("traffic policy store is closed")
        if self._consul is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                client = consul.aio.Consul(
                    host=self._host,
                    port=self._port,
                    scheme=self._scheme,
                    verify=self._verify,
                    cert=self._cert,
                    dc=self._dc,
                )
            client.token = self._token or None
            self._consul = client
        return self._consul

    def _acl(self, what: str, exc: Exception) -> ConsulAclError:
        return ConsulAclError(
            f"consul refused to {what}: {exc} — the token (CONSUL_HTTP_TOKEN /"
            f' CONSUL_HTTP_TOKEN_FILE) needs key_prefix "{KEY_PREFIX}" read (to follow'
            " traffic policies) or write (to change them)"
        )

    async def _read(self, service: str, index: int = 0) -> tuple[int, int, bytes | None]:
        """(X-Consul-Index, ModifyIndex or 0, raw value or None)."""
        key = key_of(service)
        call = self._client().kv.get(key, **self._blocking.params(index))
        try:
            raw_index, entry = await asyncio.wait_for(call, self._blocking.timeout_s(index))
        except consul.exceptions.ACLPermissionDenied as exc:
            raise self._acl(f"read {key}", exc) from None
        except _AGENT_ERRORS as exc:
            raise RegistryUnavailable(f"consul {self.address}: reading {key}: {exc}") from exc
        if entry is None:
            return int(raw_index or 0), 0, None
        value = entry.get("Value")
        return int(raw_index or 0), int(entry["ModifyIndex"]), value if value is not None else b""

    @staticmethod
    def _parse(service: str, value: bytes | None) -> TrafficPolicy | None:
        if value is None:
            return None
        policy = TrafficPolicy.loads(value)
        if policy.service != service:
            raise InvalidPolicy(
                f"{key_of(service)} holds the policy of {policy.service!r}, not {service!r}"
            )
        return policy

    async def get(self, service: str) -> TrafficPolicy | None:
        try:
            _, _, value = await self._closer.run(self._read(service))
        except Closed:
            raise RegistryUnavailable("traffic policy store is closed") from None
        return self._parse(service, value)

    async def _current(self, service: str) -> tuple[int, int]:
        """(ModifyIndex, stored revision): 0/0 when absent, revision -1 when malformed."""
        _, modify_index, value = await self._read(service)
        try:
            policy = self._parse(service, value)
        except InvalidPolicy:
            return modify_index, -1
        return modify_index, policy.revision if policy is not None else 0

    async def _write(self, service: str, call: Any, what: str) -> bool:
        try:
            ok = await asyncio.wait_for(call, self._request_timeout_s)
        except consul.exceptions.ACLPermissionDenied as exc:
            raise self._acl(f"{what} {key_of(service)}", exc) from None
        except _AGENT_ERRORS as exc:
            raise RegistryUnavailable(
                f"consul {self.address}: cannot {what} {key_of(service)}: {exc}"
            ) from exc
        return bool(ok)

    async def put(self, policy: TrafficPolicy, expected_revision: int | None) -> TrafficPolicy:
        service = policy.service
        while True:
            modify_index, current = await self._current(service)
            if expected_revision is not None and current != expected_revision:
                raise PolicyConflict(service, expected_revision, current)
            stored = policy.with_revision(max(current, 0) + 1)
            call = self._client().kv.put(key_of(service), stored.dumps(), cas=modify_index)
            if await self._write(service, call, "write"):
                log.info(
                    "traffic policy of %s is now revision %d: %s",
                    service,
                    stored.revision,
                    stored.to_json(),
                )
                return stored
            # Someone wrote between our read and our write: their revision decides.
            if expected_revision is not None:
                _, current = await self._current(service)
                raise PolicyConflict(service, expected_revision, current)

    async def delete(self, service: str, expected_revision: int | None) -> None:
        while True:
            modify_index, current = await self._current(service)
            if expected_revision is not None and current != expected_revision:
                raise PolicyConflict(service, expected_revision, current)
            if modify_index == 0:
                return
            call = self._client().kv.delete(key_of(service), cas=modify_index)
            if await self._write(service, call, "delete"):
                return
            if expected_revision is not None:
                _, current = await self._current(service)
                raise PolicyConflict(service, expected_revision, current)

    async def watch(self, service: str) -> AsyncIterator[TrafficPolicy | None]:
        key_of(service)
        first = True
        last: TrafficPolicy | None = None

        async def value_at(index: int) -> tuple[int, bytes | None]:
            new_index, _, value = await self._read(service, index)
            return new_index, value

        answers = self._blocking.follow(value_at, self._closer, self._reads)
        async with contextlib.aclosing(answers):
            async for value in answers:
                try:
                    policy = self._parse(service, value)
                except InvalidPolicy as exc:
                    log.warning(
                        "ignoring traffic policy in %s, keeping the last good one: %s",
                        key_of(service),
                        exc,
                    )
                    continue
                if first or policy != last:
                    first = False
                    last = policy
                    yield policy

    async def close(self) -> None:
        self._closer.close()
        await asyncio.sleep(0)
        client, self._consul = self._consul, None
        if client is not None:
            await client.close()
