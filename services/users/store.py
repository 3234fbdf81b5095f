"""The users service's database: accounts, sessions, tokens, keys, and the events they publish.

Tables: `users` (email unique, stored lower case; only the argon2 hash of the
password; `roles` comma-separated) and `sessions` (only the SHA-256 of each
token: a token has 256 bits of entropy, so a fast hash is enough and lets a
lookup be one indexed read). Version 2 adds `refresh_tokens` (SHA-256 of each
refresh token, its family = one login, spent/revoked marks), `signing_keys`
(Ed25519 private keys as unencrypted PKCS#8 PEM: encryption at rest is out of
scope, the database file is as secret as a key file) and `login_failures` (the
failed-login throttle's window, per email, known or not). Every state change
that others care about commits together with its event in `mesh_outbox`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shop.events.v1 import events_pb2
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from base.errors import AlreadyExists, NotFound
from mesh.db import AddColumn, Migration, schema
from mesh.db_lean import lean
from mesh.events import Outbox, new_envelope, outbox_migrations
from services.common.event_types import EVENTS
from services.common.timestamps import as_utc, utcnow

SOURCE = "users"

# Frozen: a released migration is never edited (see mesh/db.py); the store's
# tables are the replay of these (`Tables`).


def _users_v1(md: MetaData) -> Table:
    return Table(
        "users",
        md,
        Column("user_id", String(36), primary_key=True),
        Column("email", String(254), nullable=False, unique=True),
        Column("password_hash", String(255), nullable=False),
        Column("display_name", String(100), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


def _sessions_v1(md: MetaData) -> Table:
    return Table(
        "sessions",
        md,
        Column("token_hash", String(64), primary_key=True),
        Column(
            "user_id",
            String(36),
            ForeignKey("users.user_id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Index("ix_sessions_user_id", "user_id"),
    )


def _roles_v2() -> Column[str]:
    return Column("roles", String(200), nullable=False, server_default="")


def _refresh_tokens_v2(md: MetaData) -> Table:
    return Table(
        "refresh_tokens",
        md,
        Column("token_hash", String(64), primary_key=True),
        Column("family_id", String(36), nullable=False),
        Column(
            "user_id",
            String(36),
            ForeignKey("users.user_id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("used_at", DateTime(timezone=True), nullable=True),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
        Index("ix_refresh_tokens_family", "family_id"),
        Index("ix_refresh_tokens_user_id", "user_id"),
    )


def _signing_keys_v2(md: MetaData) -> Table:
    return Table(
        "signing_keys",
        md,
        Column("kid", String(64), primary_key=True),
        Column("private_key_pem", Text, nullable=False),
        Column("activates_at", DateTime(timezone=True), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


def _login_failures_v2(md: MetaData) -> Table:
    return Table(
        "login_failures",
        md,
        Column("email", String(254), nullable=False),
        Column("failed_at", DateTime(timezone=True), nullable=False),
        Index("ix_login_failures_email", "email", "failed_at"),
        Index("ix_login_failures_failed_at", "failed_at"),
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="users and sessions",
        creates=(_users_v1, _sessions_v1),
        compatible_with_previous=True,  # new tables
    ),
    Migration(
        version=2,
        name="roles, refresh tokens, signing keys, login failures",
        creates=(_refresh_tokens_v2, _signing_keys_v2, _login_failures_v2),
        adds=(AddColumn("users", _roles_v2),),
        compatible_with_previous=True,  # new tables; a column with a server default
    ),
)


def migrations() -> list[Migration]:
    return [*MIGRATIONS, *outbox_migrations()]


class Tables:
    """The users tables as the migrations leave them (one model per store)."""

    def __init__(self) -> None:
        md = schema(MIGRATIONS)
        self.users = md.tables["users"]
        self.sessions = md.tables["sessions"]
        self.refresh_tokens = md.tables["refresh_tokens"]
        self.signing_keys = md.tables["signing_keys"]
        self.login_failures = md.tables["login_failures"]


def join_roles(roles: Sequence[str]) -> str:
    return ",".join(sorted(set(roles)))


def split_roles(stored: str) -> tuple[str, ...]:
    return tuple(r for r in stored.split(",") if r)


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


@dataclass(frozen=True, slots=True)
class LoginRow:
    user_id: str
    password_hash: str
    roles: tuple[str, ...]


class Refresh(enum.Enum):
    """What presenting a refresh token led to (`UsersStore.rotate_refresh`)."""

    ROTATED = "rotated"
    UNKNOWN = "unknown"  # never issued, or its account is gone
    EXPIRED = "expired"
    REVOKED = "revoked"  # its family was revoked (logout, or an earlier reuse)
    REUSED = "reused"  # already spent: the family is revoked now


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    result: Refresh
    user_id: str = ""
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyRow:
    kid: str
    private_key_pem: str
    activates_at: datetime


class UsersStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], outbox: Outbox) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._t = Tables()
        # GetUser runs once per order: its statement is built once (bound parameter),
        # marked lean (mesh.db_lean; on SQLite its DateTime column makes it fall back).
        u = self._t.users.c
        self._get_user = lean(
            select(u.user_id, u.email, u.display_name, u.created_at).where(
                u.user_id == bindparam("uid")
            )
        )

    async def email_taken(self, email: str) -> bool:
        async with self._sessions() as s:
            found = await s.scalar(select(self._t.users.c.user_id).where(
                self._t.users.c.email == email))  # fmt: skip
        return found is not None

    async def create_user(
        self, email: str, password_hash: str, display_name: str, roles: Sequence[str] = ()
    ) -> UserRow:
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
                    display_name=display_name, created_at=row.created_at,
                    roles=join_roles(roles)))  # fmt: skip
                await self._outbox.add(s, event)
        except IntegrityError:
            # The unique email index decides between racing sign-ups.
            raise AlreadyExists(
                "an account with this email already exists", reason="EMAIL_TAKEN"
            ) from None
        return row

    async def get_user(self, user_id: str) -> UserRow:
        async with self._sessions() as s:
            found = (await s.execute(self._get_user, {"uid": user_id})).first()
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

    async def credentials(self, email: str) -> LoginRow | None:
        """Id, password hash and roles of the account with this email, if any."""
        u = self._t.users.c
        async with self._sessions() as s:
            found = (
                await s.execute(select(u.user_id, u.password_hash, u.roles).where(u.email == email))
            ).first()
        if found is None:
            return None
        return LoginRow(found.user_id, found.password_hash, split_roles(found.roles))

    async def replace_password_hash(self, user_id: str, old: str, new: str) -> None:
        """Upgrade a hash made with old parameters (only if nobody changed it meanwhile)."""
        u = self._t.users.c
        async with self._sessions.begin() as s:
            await s.execute(
                update(self._t.users)
                .where(u.user_id == user_id, u.password_hash == old)
                .values(password_hash=new)
            )

    async def create_login(
        self,
        user_id: str,
        *,
        session: tuple[str, datetime],
        refresh: tuple[str, str, datetime],
    ) -> bool:
        """Store a login in one transaction: the v1 session (token hash, expiry) and the
        first refresh token of a new family (token hash, family id, expiry). False when
        the account was deleted meanwhile."""
        now = utcnow()
        try:
            async with self._sessions.begin() as s:
                await s.execute(insert(self._t.sessions).values(
                    token_hash=session[0], user_id=user_id, created_at=now,
                    expires_at=session[1]))  # fmt: skip
                await s.execute(insert(self._t.refresh_tokens).values(
                    token_hash=refresh[0], family_id=refresh[1], user_id=user_id,
                    created_at=now, expires_at=refresh[2]))  # fmt: skip
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

    # -- refresh tokens ---------------------------------------------------------

    async def rotate_refresh(
        self, token_hash: str, new_hash: str, new_expires_at: datetime
    ) -> RefreshOutcome:
        """Spend the token `token_hash` and store its successor `new_hash`, in one transaction.

        A token already spent is a replay (stolen, or a client that lost the
        answer): its whole family is revoked, committed, and REUSED returned.
        Two racing refreshes with one token: the conditional update lets one
        win; the other is a reuse too (the strict reading, as OAuth 2.0
        Security BCP's refresh token rotation).
        """
        r = self._t.refresh_tokens
        u = self._t.users.c
        now = utcnow()
        async with self._sessions.begin() as s:
            found = (
                await s.execute(
                    select(
                        r.c.family_id, r.c.user_id, r.c.expires_at, r.c.used_at,
                        r.c.revoked_at, u.roles,
                    )
                    .join(self._t.users, u.user_id == r.c.user_id)
                    .where(r.c.token_hash == token_hash)
                )
            ).first()  # fmt: skip
            if found is None:
                return RefreshOutcome(Refresh.UNKNOWN)
            if found.revoked_at is not None:
                return RefreshOutcome(Refresh.REVOKED, found.user_id)
            spent = found.used_at is not None
            if not spent and as_utc(found.expires_at) <= now:
                return RefreshOutcome(Refresh.EXPIRED, found.user_id)
            if not spent:
                res = await s.execute(
                    update(r)
                    .where(r.c.token_hash == token_hash, r.c.used_at.is_(None))
                    .values(used_at=now)
                )
                spent = not getattr(res, "rowcount", 0)  # a racing refresh won
            if spent:
                await s.execute(
                    update(r)
                    .where(r.c.family_id == found.family_id, r.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                return RefreshOutcome(Refresh.REUSED, found.user_id)
            await s.execute(insert(r).values(
                token_hash=new_hash, family_id=found.family_id, user_id=found.user_id,
                created_at=now, expires_at=new_expires_at))  # fmt: skip
        return RefreshOutcome(Refresh.ROTATED, found.user_id, split_roles(found.roles))

    async def revoke_family(self, token_hash: str) -> bool:
        """Revoke every token of `token_hash`'s family; False if the token is unknown."""
        r = self._t.refresh_tokens
        async with self._sessions.begin() as s:
            family = await s.scalar(select(r.c.family_id).where(r.c.token_hash == token_hash))
            if family is None:
                return False
            await s.execute(
                update(r)
                .where(r.c.family_id == family, r.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return True

    # -- signing keys -------------------------------------------------------------

    async def signing_keys(self) -> list[KeyRow]:
        """Every stored key, oldest activation first."""
        k = self._t.signing_keys.c
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(k.kid, k.private_key_pem, k.activates_at).order_by(k.activates_at, k.kid)
                )
            ).all()
        return [KeyRow(r.kid, r.private_key_pem, as_utc(r.activates_at)) for r in rows]

    async def add_signing_key(self, row: KeyRow) -> None:
        async with self._sessions.begin() as s:
            await s.execute(insert(self._t.signing_keys).values(
                kid=row.kid, private_key_pem=row.private_key_pem,
                activates_at=row.activates_at, created_at=utcnow()))  # fmt: skip

    async def delete_signing_keys(self, kids: Sequence[str]) -> None:
        k = self._t.signing_keys
        async with self._sessions.begin() as s:
            await s.execute(delete(k).where(k.c.kid.in_(list(kids))))

    # -- failed logins --------------------------------------------------------------

    async def recent_failures(self, email: str, since: datetime) -> list[datetime]:
        """When `email`'s failed logins after `since` happened, oldest first."""
        f = self._t.login_failures.c
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(f.failed_at)
                    .where(f.email == email, f.failed_at > since)
                    .order_by(f.failed_at)
                )
            ).all()
        return [as_utc(r.failed_at) for r in rows]

    async def add_failure(self, email: str, at: datetime, forget_before: datetime) -> None:
        """Record a failed login; forget everyone's failures older than `forget_before`."""
        f = self._t.login_failures
        async with self._sessions.begin() as s:
            await s.execute(delete(f).where(f.c.failed_at <= forget_before))
            await s.execute(insert(f).values(email=email, failed_at=at))

    async def clear_failures(self, email: str) -> None:
        f = self._t.login_failures
        async with self._sessions.begin() as s:
            await s.execute(delete(f).where(f.c.email == email))
