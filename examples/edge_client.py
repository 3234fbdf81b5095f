"""Call the shop through the edge with a plain gRPC channel and the generated clients.

Needs nothing but the `shop-clients` wheel (the generated stubs and grpcio):
no mesh runtime, no registry. Envoy routes each call to a healthy instance.
Signing up and logging in are public; every other call carries the access token
(`authorization: Bearer <token>` metadata), which the edge verifies.

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
        email, password = f"edge-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery"
        created = await users.CreateUser(
            users_pb2.CreateUserRequest(
                email=email,
                password=password,
                profile=users_pb2.Profile(display_name="Edge Example"),
            ),
            timeout=10,
        )
        session = await users.Authenticate(
            users_pb2.AuthenticateRequest(email=email, password=password), timeout=10
        )
        token = (("authorization", f"Bearer {session.access_token}"),)
        fetched = await users.GetUser(
            users_pb2.GetUserRequest(user_id=created.user_id), metadata=token, timeout=10
        )
        print(f"created and fetched user {fetched.user_id} <{fetched.email}> through {edge}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", default="localhost:8080", help="the edge's gRPC address")
    asyncio.run(main(parser.parse_args().edge))
