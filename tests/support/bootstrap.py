"""Starting a ping service through mesh.server's bootstrap, and reading its admin HTTP endpoints."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from shop.testing.v1 import ping_pb2_grpc

from mesh.server import RunningService, ServiceDefinition
from mesh.settings import Settings
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


async def handled_calls(admin_port: int) -> set[tuple[str, str]]:
    """(grpc_method, grpc_code) of every call the service's /metrics counts as handled."""
    _status, _ctype, text = await http_get(admin_port, "/metrics")
    return {
        (sample.labels["grpc_method"], sample.labels["grpc_code"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total" and sample.value > 0
    }
