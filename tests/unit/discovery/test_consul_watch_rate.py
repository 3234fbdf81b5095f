"""A Consul watch cannot become a busy loop when the agent answers at once every time."""

from __future__ import annotations

import asyncio

from mesh.discovery.consul import ConsulRegistry
from mesh.discovery.registry import Instance


async def test_watch_queries_are_rate_limited() -> None:
    registry = ConsulRegistry("127.0.0.1:1", watch_queries_per_s=5.0)
    calls = 0

    async def instant(service: str, index: int) -> tuple[int, list[Instance]]:
        # An agent whose index moves on every answer: nothing ever blocks.
        nonlocal calls
        calls += 1
        return calls, [Instance(id=f"i{calls}", service=service, host="127.0.0.1", port=calls)]

    registry._query = instant  # type: ignore[method-assign]

    async def consume() -> None:
        async for _ in registry.watch("svc"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)  # poll: count what one second allows
    task.cancel()
    await registry.close()
    # 5 at once (the burst), then 5 a second; unlimited, this loop makes thousands.
    assert 5 <= calls <= 12, calls
