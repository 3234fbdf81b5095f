"""Assembly of the users service: database, accounts logic, servicer, definition."""

from __future__ import annotations

from shop.users.v1 import users_pb2, users_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.server import ServiceDefinition
from mesh.settings import Settings
from services.common.bootstrap import Database, open_database, service_definition
from services.users import store
from services.users.accounts import Accounts
from services.users.config import UsersConfig
from services.users.jwks import jwks_route
from services.users.passwords import Passwords
from services.users.servicer import UserServicer
from services.users.signing_keys import KeyRing, KeyTimes
from services.users.throttle import LoginThrottle

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
    accounts = make_accounts(db, cfg)
    definition = service_definition(
        NAME,
        settings,
        db,
        [(users_pb2_grpc.add_UserServiceServicer_to_server, UserServicer(accounts))],
        SERVICE_NAMES,
    )
    definition.admin_routes = [jwks_route(accounts.keys, cfg.jwks_max_age_s)]
    return definition


def make_accounts(db: Database, cfg: UsersConfig) -> Accounts:
    """The accounts logic on `db` (the service, and `services.users.admin`)."""
    users = store.UsersStore(db.sessions, db.outbox)
    return Accounts(
        users,
        Passwords(cfg.password_profile, cfg.max_concurrent_hashes),
        cfg,
        KeyRing(users, key_times(cfg)),
        LoginThrottle(
            users, max_failures=cfg.login_max_failures, window_s=cfg.login_failure_window_s
        ),
    )


def key_times(cfg: UsersConfig) -> KeyTimes:
    return KeyTimes(
        rotation_s=cfg.signing_key_rotation_s,
        publish_ahead_s=cfg.jwks_max_age_s,
        access_ttl_s=cfg.access_token_ttl_s,
    )
