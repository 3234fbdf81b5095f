"""Fixtures: a stand-in runtime, settings on loopback, and services stopped after each test."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from shop.testing.v1 import ping_pb2_grpc

from mesh.health import DependencyCheck
from mesh.server import RunningService, ServiceDefinition, start_service
from mesh.settings import Settings
from tests.integration.server._fakes import StandInRuntime
from tests.support.ping import PingServicer
from tests.support.pki import session_pki

PING_SERVICE = "shop.testing.v1.PingService"

Starter = Callable[..., Awaitable[RunningService]]


def ping_definition(servicer: PingServicer | None = None, **kwargs: Any) -> ServiceDefinition:
    return ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, servicer or PingServicer())],
        service_names=[PING_SERVICE],
        **kwargs,
    )


def make_settings(**overrides: Any) -> Settings:
    env = {"MESH_REGISTRY": "none", "MESH_INSTANCE_ID": "ping-1", "MESH_VERSION": "1.2.3"}
    return dataclasses.replace(
        Settings.from_env("ping", env), **{"security": session_pki(), **overrides}
    )


@pytest.fixture
def runtime() -> StandInRuntime:
    return StandInRuntime()


@pytest.fixture
async def start(runtime: StandInRuntime) -> AsyncIterator[Starter]:
    """start(definition=None, settings=None, runtime=None, checks=...) → a running service."""
    started: list[RunningService] = []

    async def _start(
        definition: ServiceDefinition | None = None,
        settings: Settings | None = None,
        rt: StandInRuntime | None = None,
        checks: list[DependencyCheck] | None = None,
        **kwargs: Any,
    ) -> RunningService:
        if definition is None:
            definition = ping_definition(checks=checks or [], **kwargs)
        svc = await start_service(definition, settings or make_settings(), rt or runtime)
        started.append(svc)
        return svc

    yield _start
    for svc in started:
        await svc.stop(0)


async def http_get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def health_json(port: int) -> tuple[int, dict[str, Any]]:
    status, _ctype, body = await http_get(port, "/health")
    return status, json.loads(body)
