"""The users service's database: accounts, sessions, and the events they publish.

Tables: `users` (email unique, stored lower case; only the argon2 hash of the
password) and `sessions` (only the SHA-256 of each token: a token has 256 bits of
entropy, so a fast hash is enough and lets a lookup be one indexed read). Every
state change that others care about commits together with its event in
`mesh_outbox`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shop.events.v1 import events_pb2
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from base.errors import AlreadyExists, NotFound
from mesh.db import Migration
from mesh.events import Outbox, new_envelope, outbox_migrations
from services.common.event_types import EVENTS
from services.common.timestamps import as_utc, utcnow

SOURCE = "users"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="users and sessions",
        statements=(
            "CREATE TABLE IF NOT EXISTS users ("
            " user_id VARCHAR(36) PRIMARY KEY,"
            " email VARCHAR(254) NOT NULL UNIQUE,"
            " password_hash VARCHAR(255) NOT NULL,"
            " display_name VARCHAR(100) NOT NULL,"
            " created_at TIMESTAMP WITH TIME ZONE NOT NULL)",
            "CREATE TABLE IF NOT EXISTS sessions ("
            " token_hash VARCHAR(64) PRIMARY KEY,"
            " user_id VARCHAR(36) NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,"
            " created_at TIMESTAMP WITH TIME ZONE NOT NULL,"
            " expires_at TIMESTAMP WITH TIME ZONE NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ix_sessions_user_id ON sessions (user_id)",
        ),
    ),
)


def migrations() -> list[Migration]:
    return [*MIGRATIONS, *outbox_migrations()]


class Tables:
    def __init__(self) -> None:
        md = MetaData()
        self.users = Table(
            "users",
            md,
            Column("user_id", String(36), primary_key=True),
            Column("email", String(254), nullable=False, unique=True),
            Column("password_hash", String(255), nullable=False),
            Column("display_name", String(100), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
        )
        self.sessions = Table(
            "sessions",
            md,
            Column("token_hash", String(64), primary_key=True),
            Column("user_id", String(36), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("expires_at", DateTime(timezone=True), nullable=False),
        )


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    email: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionRow:
    user_id: str
    expires_at: datetime


class UsersStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], outbox: Outbox) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._t = Tables()

    async def email_taken(self, email: str) -> bool:
        async with self._sessions() as s:
            found = await s.scalar(select(self._t.users.c.user_id).where(
                self._t.users.c.email == email))  # fmt: skip
        return found is not None

    async def create_user(self, email: str, password_hash: str, display_name: str) -> UserRow:
        """Insert the account and its `user.created` event; ALREADY_EXISTS on a taken email."""
        row = UserRow(str(uuid.uuid4()), email, display_name, utcnow())
        event = new_envelope(
            events_pb2.UserCreated(user_id=row.user_id, email=email),
            types=EVENTS,
            source=SOURCE,
            subject=row.user_id,
        )
        try:
            async with self._sessions.begin() as s:
                await s.execute(insert(self._t.users).values(
                    user_id=row.user_id, email=email, password_hash=password_hash,
                    display_name=display_name, created_at=row.created_at))  # fmt: skip
                await self._outbox.add(s, event)
        except IntegrityError:
            # The unique email index decides between racing sign-ups.
            raise AlreadyExists(
                "an account with this email already exists", reason="EMAIL_TAKEN"
            ) from None
        return row

    async def get_user(self, user_id: str) -> UserRow:
        u = self._t.users.c
        async with self._sessions() as s:
            found = (
                await s.execute(
                    select(u.user_id, u.email, u.display_name, u.created_at).where(
                        u.user_id == user_id
                    )
                )
            ).first()
        if found is None:
            raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND")
        return UserRow(found.user_id, found.email, found.display_name, as_utc(found.created_at))

    async def delete_user(self, user_id: str) -> None:
        """Delete the account, its sessions, and publish `user.deleted`, in one transaction."""
        event = new_envelope(
            events_pb2.UserDeleted(user_id=user_id), types=EVENTS, source=SOURCE, subject=user_id
        )
        async with self._sessions.begin() as s:
            # The delete comes first: on SQLite it opens the write transaction, so
            # nothing can slip in between it and the event.
            res = await s.execute(delete(self._t.users).where(self._t.users.c.user_id == user_id))
            if not getattr(res, "rowcount", 0):
                raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND")
            await s.execute(delete(self._t.sessions).where(self._t.sessions.c.user_id == user_id))
            await self._outbox.add(s, event)

    async def credentials(self, email: str) -> tuple[str, str] | None:
        """(user_id, password_hash) of the account with this email, if any."""
        u = self._t.users.c
        async with self._sessions() as s:
            found = (
                await s.execute(select(u.user_id, u.password_hash).where(u.email == email))
            ).first()
        return None if found is None else (found.user_id, found.password_hash)

    async def replace_password_hash(self, user_id: str, old: str, new: str) -> None:
        """Upgrade a hash made with old parameters (only if nobody changed it meanwhile)."""
        u = self._t.users.c
        async with self._sessions.begin() as s:
            await s.execute(
                update(self._t.users)
                .where(u.user_id == user_id, u.password_hash == old)
                .values(password_hash=new)
            )

    async def create_session(self, user_id: str, token_hash: str, expires_at: datetime) -> bool:
        """Store a session; False when the account was deleted meanwhile."""
        try:
            async with self._sessions.begin() as s:
                await s.execute(insert(self._t.sessions).values(
                    token_hash=token_hash, user_id=user_id, created_at=utcnow(),
                    expires_at=expires_at))  # fmt: skip
        except IntegrityError:  # foreign key: the user is gone
            return False
        return True

    async def session(self, token_hash: str) -> SessionRow | None:
        c = self._t.sessions.c
        async with self._sessions() as s:
            found = (
                await s.execute(select(c.user_id, c.expires_at).where(c.token_hash == token_hash))
            ).first()
        return None if found is None else SessionRow(found.user_id, as_utc(found.expires_at))

    async def delete_session(self, token_hash: str) -> None:
        async with self._sessions.begin() as s:
            await s.execute(
                delete(self._t.sessions).where(self._t.sessions.c.token_hash == token_hash)
            )
