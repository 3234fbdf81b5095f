"""A stand-in `orders` upstream in a process of its own, to be killed with its calls in
flight: `python -m tests.support.slow_upstream [--delay-s S]`.

It serves `shop.orders.v2.OrderService/GetOrder` (answered after `--delay-s`) and gRPC
health with the `orders` mesh identity (the test run's CA: MESH_PKI_DIR is inherited),
prints `READY <port>` and serves until stdin closes or it is killed. Why a process: a
SIGKILL drops its connections the way a crashed instance does; stopping an in-process
grpc.aio server instead answers some calls CANCELLED, which the edge rightly does not
retry, so it tests the stand-in, not the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from tests.support.edge_stand_ins import start_upstream


class SlowOrders(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def GetOrder(self, request: Any, context: Any) -> orders_pb2.Order:
        await asyncio.sleep(self.delay_s)  # poll: the delay is the slow read it stands for
        return orders_pb2.Order(order_id=request.order_id)


async def _serve(delay_s: float) -> None:
    add = orders_pb2_grpc.add_OrderServiceServicer_to_server
    server, instance = await start_upstream("orders", [(add, SlowOrders(delay_s))])
    print(f"READY {instance.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await server.stop(None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--delay-s", type=float, default=0.45)
    a = p.parse_args()
    asyncio.run(_serve(a.delay_s))


if __name__ == "__main__":
    main()
