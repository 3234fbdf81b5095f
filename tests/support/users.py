"""The users service in integration tests: a served instance, its stub, sign-ups."""

from __future__ import annotations

from pathlib import Path

from shop.users.v1 import users_pb2, users_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.users.app import build
from services.users.config import UsersConfig
from tests.support.services import Served, serve, service_settings

FAST = UsersConfig(password_profile="cheapest")  # argon2's test-only profile
PASSWORD = "correct horse battery"


async def serve_users(engine: AsyncEngine, tmp_path: Path, config: UsersConfig = FAST) -> Served:
    return await serve(build, service_settings("users", tmp_path), engine=engine, config=config)


def users_stub(s: Served) -> users_pb2_grpc.UserServiceAsyncStub:
    return users_pb2_grpc.UserServiceStub(s.channel)  # type: ignore[return-value]


async def sign_up(
    users: users_pb2_grpc.UserServiceAsyncStub,
    email: str = "Ada@Example.com",
    name: str = "Ada",
    password: str = PASSWORD,
) -> users_pb2.User:
    return await users.CreateUser(
        users_pb2.CreateUserRequest(
            email=email, password=password, profile=users_pb2.Profile(display_name=name)
        )
    )
