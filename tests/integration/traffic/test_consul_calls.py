"""The same client behaviour with Consul: instances register their track in Consul's
service Meta, the policy lives in Consul KV, and a proxyless client follows it live
(the test agent runs the real gRPC health checks over mTLS with its own identity)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.client.runtime import MeshRuntime
from mesh.server import RunningService, start_service
from mesh.settings import Settings
from mesh.traffic.consul_store import ConsulPolicyStore
from mesh.traffic.policy import TrafficPolicy
from tests.support import pki
from tests.support.bootstrap import ping_definition
from tests.support.consul_agent import AgentTls, ConsulTestAgent, consul_test_agent
from tests.support.ping import PingServicer
from tests.support.poll import eventually


@pytest.fixture
async def agent() -> AsyncIterator[ConsulTestAgent]:
    consul = pki.pair("consul")
    async with consul_test_agent(tls=AgentTls(pki.ca_pem(), consul.cert_pem, consul.key_pem)) as a:
        yield a


def consul_settings(agent: ConsulTestAgent, service: str, **env: str) -> Settings:
    base = {"CONSUL_HTTP_ADDR": agent.address, **env}
    return dataclasses.replace(Settings.from_env(service, base), security=pki.session_pki())


async def test_client_follows_a_policy_in_consul_kv(agent: ConsulTestAgent) -> None:
    started: list[tuple[RunningService, MeshRuntime]] = []
    client = await MeshRuntime.create(consul_settings(agent, "caller"))
    store = ConsulPolicyStore(agent.address, blocking_wait_s=2.0)
    try:
        for i, track in enumerate(("blue", "green")):
            settings = consul_settings(
                agent, "ping", MESH_TRACK=track, MESH_INSTANCE_ID=f"ping-{track}-{i}"
            )
            runtime = await MeshRuntime.create(settings)
            svc = await start_service(ping_definition(PingServicer(track)), settings, runtime)
            started.append((svc, runtime))
        metas = [s.meta for s in agent._services.values()]
        assert sorted(m["track"] for m in metas) == ["blue", "green"]

        channel = client.channel("ping")
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await eventually(lambda: len(channel.pool.endpoints()) == 2, 30, "both instances")

        async def answered(n: int, **kwargs: Any) -> Counter[str]:
            return Counter(
                [(await stub.Ping(ping_pb2.PingRequest(), **kwargs)).server for _ in range(n)]
            )

        stored = await store.put(TrafficPolicy("ping", {"blue": 0, "green": 100}), 0)
        await eventually(lambda: channel.pool.policy == stored, 10, "the client to follow")
        assert await answered(40) == {"green": 40}
        assert await answered(20, metadata=(("x-mesh-track", "blue"),)) == {"blue": 20}

        stored = await store.put(TrafficPolicy("ping", {"blue": 100, "green": 0}), 1)
        await eventually(lambda: channel.pool.policy == stored, 10, "the change to apply")
        assert await answered(40) == {"blue": 40}

        # Faults from KV reach the green instance's server chain.
        faulty = TrafficPolicy.from_json(
            {
                "service": "ping",
                "weights": {"blue": 100, "green": 0},
                "faults": [{"subset": "green", "abort_percent": 100, "abort_status": "ABORTED"}],
            }
        )
        stored = await store.put(faulty, 2)
        green_runtime = started[1][1]
        await eventually(lambda: green_runtime.traffic.current("ping") == stored, 10, "faults")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ping(ping_pb2.PingRequest(), metadata=(("x-mesh-track", "green"),))
        assert info.value.code() is grpc.StatusCode.ABORTED
        assert await answered(10) == {"blue": 10}
    finally:
        await store.close()
        await client.close()
        for svc, runtime in started:
            await svc.stop(0)
            await runtime.close()
