"""Call the shop through the mesh client: `mesh.connect` picks a healthy instance itself.

With no settings it finds the mesh `make run` / `meshctl up` started (the
registry it recorded for this user); `MESH_REGISTRY_DIR` or `CONSUL_HTTP_ADDR`
point it elsewhere. Calls go straight to the services, with deadlines,
retries of idempotent calls, circuit breaking and tracing; `mesh.as_user` names
the end user the calls act for (methods of an account need one).

    python examples/mesh_client.py
"""

from __future__ import annotations

import asyncio
import uuid

from shop.orders.v2 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

import mesh


async def main() -> None:
    try:
        users = await mesh.connect("users", users_pb2_grpc.UserServiceStub)
        orders = await mesh.connect("orders", orders_pb2_grpc.OrderServiceStub)
        user = await users.CreateUser(
            users_pb2.CreateUserRequest(
                email=f"mesh-{uuid.uuid4().hex[:8]}@example.com",
                password="correct horse battery",
                profile=users_pb2.Profile(display_name="Mesh Example"),
            )
        )
        # Orders are listed for an end user: the edge says who after checking a token;
        # a mesh client (it holds the mesh CA, as `mesh-client`) says it with as_user.
        with mesh.as_user(user.user_id):
            page = await orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user.user_id))
        print(f"user {user.user_id} has {len(page.orders)} orders (called through the mesh)")
    finally:
        await mesh.close_default_runtime()


if __name__ == "__main__":
    asyncio.run(main())
