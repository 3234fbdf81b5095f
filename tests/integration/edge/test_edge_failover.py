"""An instance that dies with many calls in flight: the edge retries every one of them.

A real Envoy on the rendered config in front of two stand-in `orders` instances. The
reads are slow enough (0.45 s, under the edge's 0.5 s hedge timeout) to pile up: with
300 in flight, each instance holds ~150 when one is stopped. Every read it held needs a
retry on the other instance at once, and the cluster's retry budget decides how many
may run together: with 50 % and a floor of 128, 7-34 of the 300 failed (UNAVAILABLE)
though the other instance would have answered them, the way 2 reads of 6,239 failed in
the chaos test's kill of orders-1 (tests/chaos/test_faults.py); with 100 % and the same
floor, still 7 (the budget counts the calls in flight, and the dead instance's are no
longer in flight when they ask for their retries). The edge's floor is now the cluster's
request limit (1,024; `mesh/edge/envoy_config.py`).
"""

from __future__ import annotations

import asyncio
import collections
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.edge.jwt_authn import EdgeAuthOptions
from tests.support.edge_stand_ins import FixedRegistry, running_edge, start_upstream

IN_FLIGHT = 300


class SlowOrders(orders_pb2_grpc.OrderServiceServicer):
    async def GetOrder(self, request: Any, context: Any) -> orders_pb2.Order:
        await asyncio.sleep(0.45)  # a slow read, answered before the edge would hedge it
        return orders_pb2.Order(order_id=request.order_id)


def _stat(stats: str, name: str) -> int:
    found = re.search(rf"^cluster\.orders\.{name}: (\d+)$", stats, re.M)
    assert found, f"{name} not in {stats}"
    return int(found.group(1))


@pytest.mark.slow
async def test_every_call_of_a_dead_instance_is_retried_on_the_other(tmp_path: Path) -> None:
    add = orders_pb2_grpc.add_OrderServiceServicer_to_server
    victim, first = await start_upstream("orders", [(add, SlowOrders())], index=1)
    survivor, second = await start_upstream("orders", [(add, SlowOrders())], index=2)
    registry = FixedRegistry([first, second])
    try:
        async with running_edge(tmp_path, registry, auth=EdgeAuthOptions(enabled=False)) as edge:
            await asyncio.to_thread(edge.envoy.wait_healthy, "orders", 2)
            outcomes: collections.Counter[str] = collections.Counter()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
                stub = orders_pb2_grpc.OrderServiceStub(channel)

                async def read(k: int) -> None:
                    try:
                        got = await stub.GetOrder(
                            orders_pb2.GetOrderRequest(order_id=f"o{k}"), timeout=20
                        )
                        outcomes["OK" if got.order_id == f"o{k}" else "wrong order"] += 1
                    except grpc.aio.AioRpcError as err:
                        outcomes[f"{err.code().name}: {err.details()}"] += 1

                reads = [asyncio.create_task(read(k)) for k in range(IN_FLIGHT)]
                await asyncio.sleep(0.25)  # all sent, none answered yet
                await victim.stop(None)  # dies with its calls in flight
                await asyncio.gather(*reads)
            stats = await asyncio.to_thread(
                edge.envoy.admin, "/stats?filter=cluster.orders.upstream_rq_retry"
            )
        assert outcomes == {"OK": IN_FLIGHT}, (outcomes, stats)
        # The dead instance's share really was retried, and none was refused for budget.
        assert _stat(stats, "upstream_rq_retry") > 100, stats
        assert _stat(stats, "upstream_rq_retry_overflow") == 0, stats
    finally:
        await registry.close()
        await victim.stop(None)
        await survivor.stop(None)
