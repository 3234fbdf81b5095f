"""`python -m services.users.admin create-admin --email ...`: the first admin of a fresh install.

Why a command and not settings read at start (`USERS_BOOTSTRAP_ADMIN_*`): it
runs once, when the operator decides, and leaves nothing behind: no password
file that must be deleted afterwards, no variable every later start re-reads
(and that would re-create a deleted admin), no secret in the service's
environment (`/proc/<pid>/environ`). It writes to the users database the
service uses (`USERS_DATABASE_URL`, else `<MESH_DATA_DIR>/users.db`), migrated
first, so it also works before the service ever started; the `user.created`
event goes out through the outbox when the service runs.

The password is never an argument (visible in `ps`): it is read from a
prompt (twice, without echo) on a terminal, else from the first line of
stdin (`printf '%s\\n' "$PW" | python -m services.users.admin create-admin ...`).
An existing email is refused (exit 1): this command creates, it does not
promote. `meshctl` has no project commands (mesh.toml names only services,
events and the demo), so this is not `meshctl users create-admin`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence

from shop.users.v1 import users_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from base.errors import AlreadyExists, InvalidArgument
from mesh.settings import Settings
from services.common.bootstrap import open_database
from services.users import store, validation
from services.users.app import NAME, make_accounts
from services.users.config import UsersConfig

ADMIN_ROLE = "admin"


def read_password(stdin_is_tty: bool) -> str:
    if stdin_is_tty:
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def create_admin(
    settings: Settings,
    config: UsersConfig,
    email: str,
    password: str,
    display_name: str,
    *,
    engine: AsyncEngine | None = None,
) -> str:
    """Create the account with the admin role; its id. INVALID_ARGUMENT/ALREADY_EXISTS raise.

    `engine` replaces the one made from settings (tests: a PostgreSQL schema)."""
    new = validation.create_user(
        users_pb2.CreateUserRequest(
            email=email, password=password, profile=users_pb2.Profile(display_name=display_name)
        )
    )
    db = await open_database(settings, store.migrations(), engine=engine)
    try:
        row = await make_accounts(db, config).create(new, roles=(ADMIN_ROLE,))
    finally:
        await db.close()
    return row.user_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.users.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser(
        "create-admin",
        help="create an account with the admin role (password from a prompt or stdin)",
    )
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="Admin", help="display name (default: Admin)")
    args = parser.parse_args(argv)
    password = read_password(sys.stdin.isatty())
    settings = Settings.from_env(NAME)
    try:
        user_id = asyncio.run(
            create_admin(settings, UsersConfig.from_env(), args.email, password, args.name)
        )
    except InvalidArgument as exc:
        print(f"create-admin: {exc.message}", file=sys.stderr)
        return 2
    except AlreadyExists as exc:
        print(f"create-admin: {exc.message}", file=sys.stderr)
        return 1
    print(f"admin {user_id} created ({args.email.strip().lower()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
