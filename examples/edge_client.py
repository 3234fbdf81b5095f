"""Call the shop through the edge with a plain gRPC channel and the generated clients.

Needs nothing but the `shop-clients` wheel (the generated stubs and grpcio):
no mesh runtime, no registry. Envoy routes each call to a healthy instance.

    python examples/edge_client.py [--edge localhost:8080]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import grpc
from shop.users.v1 import users_pb2, users_pb2_grpc


async def main(edge: str) -> None:
    async with grpc.aio.insecure_channel(edge) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        created = await users.CreateUser(
            users_pb2.CreateUserRequest(
                email=f"edge-{uuid.uuid4().hex[:8]}@example.com",
                password="correct horse battery",
                profile=users_pb2.Profile(display_name="Edge Example"),
            ),
            timeout=10,
        )
        fetched = await users.GetUser(users_pb2.GetUserRequest(user_id=created.user_id), timeout=10)
        print(f"created and fetched user {fetched.user_id} <{fetched.email}> through {edge}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", default="localhost:8080", help="the edge's gRPC address")
    asyncio.run(main(parser.parse_args().edge))
