"""The test agent answers as Consul's HTTP API documentation says a real agent does.

The same assertions run against a real agent when CONSUL_HTTP_ADDR is set, so
the fake that the backend tests rely on is itself checked against the real thing.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.consul_agent import BadRequest, consul_test_agent, parse_go_duration
from tests.support.discovery import REAL_CONSUL
from tests.support.poll import eventually as wait_until


class Agent:
    """Raw HTTP to an agent (test or real), cleaning up the services it registered."""

    def __init__(self, address: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base = f"http://{address}"
        self.headers = {"X-Consul-Token": token} if token else {}
        self.session = session
        self.registered: list[str] = []
        self.is_real = False

    async def put(self, path: str, body: Any = None) -> tuple[int, str]:
        async with self.session.put(self.base + path, json=body, headers=self.headers) as r:
            return r.status, await r.text()

    async def get(self, path: str, **params: str) -> tuple[int, Any, dict[str, str]]:
        async with self.session.get(self.base + path, params=params, headers=self.headers) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, dict(r.headers)

    async def register(self, body: dict[str, Any]) -> None:
        status, text = await self.put("/v1/agent/service/register", body)
        assert status == 200, text
        lowered = {k.lower(): v for k, v in body.items()}
        self.registered.append(lowered.get("id") or lowered["name"])


@pytest.fixture(
    params=[
        "consul-test-agent",
        pytest.param(
            "consul-real-agent",
            marks=pytest.mark.skipif(not REAL_CONSUL, reason="CONSUL_HTTP_ADDR not set"),
        ),
    ]
)
async def agent(request: pytest.FixtureRequest) -> AsyncIterator[Agent]:
    async with aiohttp.ClientSession() as session:
        if request.param == "consul-real-agent":
            a = Agent(REAL_CONSUL, os.environ.get("CONSUL_HTTP_TOKEN", ""), session)
            a.is_real = True
            try:
                yield a
            finally:
                for sid in a.registered:
                    await a.put(f"/v1/agent/service/deregister/{sid}")
        else:
            async with consul_test_agent() as fake:
                yield Agent(fake.address, "", session)


def _name() -> str:
    return f"fake-check-{uuid.uuid4().hex[:8]}"


async def test_invalid_requests_are_refused_like_consul(agent: Agent) -> None:
    status, _ = await agent.put("/v1/agent/service/register", {"Port": 1})
    assert status == 400  # Missing service name
    grpc_without_interval = {"Name": _name(), "Check": {"GRPC": "127.0.0.1:1"}}
    status, _ = await agent.put("/v1/agent/service/register", grpc_without_interval)
    assert status == 400
    status, text = await agent.put(f"/v1/agent/service/deregister/{_name()}")
    assert status == 404 and "Unknown service ID" in text
    status, leader, _ = await agent.get("/v1/status/leader")
    assert status == 200 and isinstance(leader, str) and leader


async def test_passing_filter_and_ttl_check_updates(agent: Agent) -> None:
    name = _name()
    # lower-case keys, as py-consul sends them: Consul's decoder ignores case
    await agent.register({"name": name, "id": name, "port": 7, "check": {"ttl": "30s"}})
    path = f"/v1/health/service/{name}"
    _, every, headers = await agent.get(path)
    _, passing, _ = await agent.get(path, passing="1")
    assert [e["Service"]["ID"] for e in every] == [name] and passing == []
    assert every[0]["Checks"][-1]["Status"] == "critical"  # Consul's initial status
    index = int(headers["X-Consul-Index"])

    status, _ = await agent.put(f"/v1/agent/check/pass/service:{name}")
    assert status == 200
    _, passing, headers = await agent.get(path, passing="1")
    assert [e["Service"]["Port"] for e in passing] == [7]
    assert int(headers["X-Consul-Index"]) > index
    _, services, _ = await agent.get("/v1/agent/services")
    _, checks, _ = await agent.get("/v1/agent/checks")
    assert services[name]["Service"] == name and checks[f"service:{name}"]["Status"] == "passing"


async def test_blocking_query_holds_until_a_change_or_the_wait(agent: Agent) -> None:
    name = _name()
    await agent.register({"Name": name, "ID": name, "Check": {"TTL": "30s"}})
    path = f"/v1/health/service/{name}"
    _, _, headers = await agent.get(path)
    index = headers["X-Consul-Index"]

    start = time.monotonic()
    async with asyncio.timeout(5):  # the wait ends it
        _, _, headers = await agent.get(path, index=index, wait="400ms")
    assert time.monotonic() - start >= 0.35  # held (a lower bound: load only adds time)
    assert headers["X-Consul-Index"] == index  # nothing changed

    async def change_soon() -> None:
        await asyncio.sleep(0.2)  # poll: the change lands while the blocking query waits
        await agent.put(f"/v1/agent/check/pass/service:{name}")

    changer = asyncio.create_task(change_soon())
    async with asyncio.timeout(5):  # woke on the change, not after the 10 s wait
        _, body, headers = await agent.get(path, index=index, wait="10s")
    await changer
    assert int(headers["X-Consul-Index"]) > int(index)
    assert body[0]["Checks"][-1]["Status"] == "passing"


async def test_critical_service_is_deregistered_after_the_configured_time(agent: Agent) -> None:
    if agent.is_real:
        pytest.skip("a real agent reaps no sooner than 1 min (reaper every 30 s)")
    name = _name()
    check = {"TTL": "30s", "DeregisterCriticalServiceAfter": "300ms"}
    await agent.register({"Name": name, "ID": name, "Check": check})

    async def gone() -> bool:
        _, services, _ = await agent.get("/v1/agent/services")
        return name not in services

    assert await wait_until(gone, 2.0, "reaped") >= 0.25


def test_go_durations_parse_like_go() -> None:
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("250ms") == 0.25
    assert parse_go_duration("1.5h") == 5400
    for bad in ("10", "s", "1x", "1s2"):
        with pytest.raises(BadRequest):
            parse_go_duration(bad)


async def test_unknown_keys_are_refused_like_consul(agent: Agent) -> None:
    status, text = await agent.put(
        "/v1/agent/service/register", {"Name": _name(), "Port": 1, "Bogus": True}
    )
    assert status == 400 and "unknown field" in text, text
    status, text = await agent.put(
        "/v1/agent/service/register",
        {"Name": _name(), "Check": {"TTL": "30s", "GRPCHealth": "x"}},
    )
    assert status == 400 and "unknown field" in text, text


async def test_a_wildcard_address_is_refused(agent: Agent) -> None:
    for address in ("0.0.0.0", "::"):
        status, _ = await agent.put(
            "/v1/agent/service/register", {"Name": _name(), "Port": 1, "Address": address}
        )
        assert status == 400, address


async def test_flags_parse_strictly(agent: Agent) -> None:
    name = _name()
    await agent.register({"Name": name, "Port": 7, "Check": {"TTL": "30s"}})
    status, _, _ = await agent.get(f"/v1/health/service/{name}", passing="maybe")
    assert status == 400
    status, body, _ = await agent.get(f"/v1/health/service/{name}", passing="")
    assert status == 200 and body == []  # present without a value: true (critical filtered)


async def test_re_registration_keeps_the_check_status(agent: Agent) -> None:
    name = _name()
    service = {"Name": name, "ID": name, "Port": 7, "Check": {"TTL": "30s"}}
    await agent.register(service)
    status, _ = await agent.put(f"/v1/agent/check/pass/service:{name}")
    assert status == 200
    await agent.register({**service, "Tags": ["v2"]})  # the same id again
    _, passing, _ = await agent.get(f"/v1/health/service/{name}", passing="1")
    assert [e["Service"]["Tags"] for e in passing] == [["v2"]]


async def _kv(agent: Agent, method: str, key: str, data: bytes | None = None, **params: str) -> Any:
    url = f"{agent.base}/v1/kv/{key}"
    async with agent.session.request(
        method, url, data=data, params=params, headers=agent.headers
    ) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, dict(r.headers)


async def test_kv_cas_and_blocking_like_consul(agent: Agent) -> None:
    """What the traffic policy store relies on: 404 with an index, base64 values,
    CAS by ModifyIndex (0: only if absent), blocking queries on one key."""
    import base64

    key = f"shop-mesh/test/{_name()}"
    status, _, headers = await _kv(agent, "GET", key)
    assert status == 404 and int(headers["X-Consul-Index"]) >= 1
    status, ok, _ = await _kv(agent, "PUT", key, b"one", cas="0")
    assert (status, ok) == (200, True)
    status, ok, _ = await _kv(agent, "PUT", key, b"again", cas="0")
    assert (status, ok) == (200, False)  # exists: cas=0 refuses
    status, [entry], headers = await _kv(agent, "GET", key)
    assert base64.b64decode(entry["Value"]) == b"one" and entry["Key"] == key
    modify = entry["ModifyIndex"]
    assert int(headers["X-Consul-Index"]) == modify
    status, ok, _ = await _kv(agent, "PUT", key, b"two", cas=str(modify + 1000))
    assert ok is False
    status, ok, _ = await _kv(agent, "PUT", key, b"two", cas=str(modify))
    assert ok is True
    status, [entry], _ = await _kv(agent, "GET", key)
    assert base64.b64decode(entry["Value"]) == b"two" and entry["ModifyIndex"] > modify

    async def change_soon() -> None:
        await asyncio.sleep(0.2)  # poll: the change lands while the blocking query waits
        await _kv(agent, "PUT", key, b"three")

    changer = asyncio.create_task(change_soon())
    async with asyncio.timeout(5):  # woke on the change, not after the 10 s wait
        _, [entry], _ = await _kv(agent, "GET", key, index=str(entry["ModifyIndex"]), wait="10s")
    await changer
    assert base64.b64decode(entry["Value"]) == b"three"
    status, ok, _ = await _kv(agent, "DELETE", key, cas="1")
    assert ok is False  # wrong index: kept
    status, ok, _ = await _kv(agent, "DELETE", key, cas=str(entry["ModifyIndex"]))
    assert ok is True
    status, _, _ = await _kv(agent, "GET", key)
    assert status == 404
    status, _, _ = await _kv(agent, "PUT", key, b"x", cas="not-a-number")
    assert status == 400
