"""Assembly of the users service: database, accounts logic, servicer, definition."""

from __future__ import annotations

from shop.users.v1 import users_pb2, users_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.server import ServiceDefinition
from mesh.settings import Settings
from services.common.bootstrap import open_database, service_definition
from services.users import store
from services.users.accounts import Accounts
from services.users.config import UsersConfig
from services.users.passwords import Passwords
from services.users.servicer import UserServicer

NAME = "users"
SERVICE_NAMES = (users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,)


async def build(
    settings: Settings,
    runtime: object,
    *,
    engine: AsyncEngine | None = None,
    config: UsersConfig | None = None,
) -> ServiceDefinition:
    """The users service (it calls no other service: `runtime` is unused).

    `engine` replaces the one made from settings (tests pass one with its own
    PostgreSQL schema); `config` replaces `UsersConfig.from_env()`.
    """
    cfg = config or UsersConfig.from_env()
    db = await open_database(settings, store.migrations(), engine=engine)
    accounts = Accounts(
        store.UsersStore(db.sessions, db.outbox),
        Passwords(cfg.password_profile, cfg.max_concurrent_hashes),
        cfg,
    )
    return service_definition(
        NAME,
        settings,
        db,
        [(users_pb2_grpc.add_UserServiceServicer_to_server, UserServicer(accounts))],
        SERVICE_NAMES,
    )
