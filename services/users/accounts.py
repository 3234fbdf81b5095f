"""Accounts and sessions: the users service's rules between the servicer and the store.

- Sign-up hashes the password (argon2id) before opening a transaction, after a
  cheap check that the email is free; the unique index still decides races.
- Login answers one `Unauthenticated` for an unknown email and a wrong password
  (same message, same reason, same argon2 cost), so neither the answer nor its
  timing tells which accounts exist.
- A session token is `secrets.token_urlsafe(32)`; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from base.errors import AlreadyExists, Unauthenticated
from services.common.timestamps import utcnow
from services.users.config import UsersConfig
from services.users.passwords import Passwords
from services.users.store import UserRow, UsersStore
from services.users.validation import Credentials, NewUser

log = logging.getLogger(__name__)

BAD_CREDENTIALS = "wrong email or password"
BAD_SESSION = "the session is unknown or expired"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    user_id: str
    expires_at: datetime


class Accounts:
    def __init__(self, store: UsersStore, passwords: Passwords, config: UsersConfig) -> None:
        self.store = store
        self.passwords = passwords
        self.config = config

    async def create(self, new: NewUser) -> UserRow:
        if await self.store.email_taken(new.email):
            raise AlreadyExists("an account with this email already exists", reason="EMAIL_TAKEN")
        password_hash = await self.passwords.hash(new.password)
        row = await self.store.create_user(new.email, password_hash, new.display_name)
        log.info("user %s created", row.user_id)
        return row

    async def authenticate(self, creds: Credentials) -> NewSession:
        found = await self.store.credentials(creds.email)
        # Verified even when the email is unknown (against a decoy): same cost, same answer.
        ok = await self.passwords.verify(found[1] if found else None, creds.password)
        if found is None or not ok:
            raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
        user_id, stored_hash = found
        if self.passwords.needs_rehash(stored_hash):
            new_hash = await self.passwords.hash(creds.password)
            await self.store.replace_password_hash(user_id, stored_hash, new_hash)
        token = secrets.token_urlsafe(32)
        expires_at = utcnow() + timedelta(seconds=self.config.session_ttl_s)
        if not await self.store.create_session(user_id, token_hash(token), expires_at):
            # Deleted between the password check and now.
            raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
        log.info("user %s authenticated", user_id)
        return NewSession(token, user_id, expires_at)

    async def validate(self, token: str) -> tuple[str, datetime]:
        """(user_id, expires_at) of a live session; UNAUTHENTICATED otherwise."""
        digest = token_hash(token)
        session = await self.store.session(digest)
        if session is None:
            raise Unauthenticated(BAD_SESSION, reason="SESSION_INVALID")
        if session.expires_at <= utcnow():
            await self.store.delete_session(digest)
            raise Unauthenticated(BAD_SESSION, reason="SESSION_INVALID")
        return session.user_id, session.expires_at
