"""Fixtures: a stand-in runtime, settings on loopback, and services stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh.health import DependencyCheck
from mesh.server import RunningService, ServiceDefinition, start_service
from mesh.settings import Settings
from tests.support.bootstrap import Starter, make_settings, ping_definition
from tests.support.stand_ins import StandInRuntime


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
