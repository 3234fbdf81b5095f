"""Accounts, logins and tokens: the users service's rules between the servicer and the store.

- Sign-up hashes the password (argon2id) before opening a transaction, after a
  cheap check that the email is free; the unique index still decides races.
  Sign-up tells that an email is taken (ALREADY_EXISTS): a decision, see the
  README ("End users: tokens"): without an email-verification flow there is no
  way to hide it that keeps sign-up usable, and the edge rate-limits sign-up.
- Login is throttled per email before any hashing (`throttle.LoginThrottle`),
  then answers one `Unauthenticated` for an unknown email and a wrong password
  (same message, same reason, same argon2 cost), so neither the answer nor its
  timing tells which accounts exist.
- A login issues a v1 session token (kept for `ValidateSession`), a signed
  access token (`tokens.access_token`) and a refresh token that starts a new
  family; `refresh` spends one refresh token for a new pair (reuse revokes the
  family), `revoke` revokes the family (logout). Opaque tokens are
  `secrets.token_urlsafe(32)`; only their SHA-256 is stored.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from base.errors import AlreadyExists, Unauthenticated
from services.common.timestamps import utcnow
from services.users.config import UsersConfig
from services.users.passwords import Passwords
from services.users.signing_keys import KeyRing
from services.users.store import Refresh, UserRow, UsersStore
from services.users.throttle import LoginThrottle
from services.users.tokens import access_token, new_opaque_token, token_hash
from services.users.validation import Credentials, NewUser

log = logging.getLogger(__name__)

BAD_CREDENTIALS = "wrong email or password"
BAD_SESSION = "the session is unknown or expired"
BAD_REFRESH = "the refresh token is unknown, expired, spent or revoked"


@dataclass(frozen=True, slots=True)
class Tokens:
    """An access token and a refresh token, with their expiry."""

    user_id: str
    roles: tuple[str, ...]
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


@dataclass(frozen=True, slots=True)
class Login:
    """What a successful login yields: the v1 session and the tokens."""

    session_token: str
    session_expires_at: datetime
    tokens: Tokens


class Accounts:
    def __init__(
        self,
        store: UsersStore,
        passwords: Passwords,
        config: UsersConfig,
        keys: KeyRing,
        throttle: LoginThrottle,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.config = config
        self.keys = keys
        self.throttle = throttle

    async def create(self, new: NewUser, roles: tuple[str, ...] = ()) -> UserRow:
        if await self.store.email_taken(new.email):
            raise AlreadyExists("an account with this email already exists", reason="EMAIL_TAKEN")
        password_hash = await self.passwords.hash(new.password)
        row = await self.store.create_user(new.email, password_hash, new.display_name, roles)
        log.info("user %s created", row.user_id)
        return row

    async def authenticate(self, creds: Credentials) -> Login:
        async with self.throttle.attempt(creds.email) as attempt:
            found = await self.store.credentials(creds.email)
            # Verified even when the email is unknown (against a decoy): same cost, same answer.
            ok = await self.passwords.verify(found.password_hash if found else None, creds.password)
            if found is None or not ok:
                await attempt.failed()
                raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
            await attempt.succeeded()
        if self.passwords.needs_rehash(found.password_hash):
            new_hash = await self.passwords.hash(creds.password)
            await self.store.replace_password_hash(found.user_id, found.password_hash, new_hash)
        now = utcnow()
        session = new_opaque_token()
        session_expires = now + timedelta(seconds=self.config.session_ttl_s)
        refresh = new_opaque_token()
        refresh_expires = now + timedelta(seconds=self.config.refresh_token_ttl_s)
        stored = await self.store.create_login(
            found.user_id,
            session=(token_hash(session), session_expires),
            refresh=(token_hash(refresh), str(uuid.uuid4()), refresh_expires),
        )
        if not stored:
            # Deleted between the password check and now.
            raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
        log.info("user %s authenticated", found.user_id)
        tokens = await self._tokens(found.user_id, found.roles, refresh, refresh_expires)
        return Login(session, session_expires, tokens)

    async def refresh(self, refresh_token: str) -> Tokens:
        """A new pair for a live refresh token; UNAUTHENTICATED otherwise (reuse revokes)."""
        successor = new_opaque_token()
        expires = utcnow() + timedelta(seconds=self.config.refresh_token_ttl_s)
        outcome = await self.store.rotate_refresh(
            token_hash(refresh_token), token_hash(successor), expires
        )
        if outcome.result is Refresh.REUSED:
            log.warning("refresh token of user %s reused: its family is revoked", outcome.user_id)
        if outcome.result is not Refresh.ROTATED:
            raise Unauthenticated(BAD_REFRESH, reason="REFRESH_TOKEN_INVALID")
        return await self._tokens(outcome.user_id, outcome.roles, successor, expires)

    async def revoke(self, refresh_token: str) -> None:
        """Log out: the refresh token's family stops working (unknown tokens: nothing to do)."""
        if await self.store.revoke_family(token_hash(refresh_token)):
            log.info("a refresh token family was revoked (logout)")

    async def validate(self, token: str) -> tuple[str, datetime]:
        """(user_id, expires_at) of a live v1 session; UNAUTHENTICATED otherwise."""
        digest = token_hash(token)
        session = await self.store.session(digest)
        if session is None:
            raise Unauthenticated(BAD_SESSION, reason="SESSION_INVALID")
        if session.expires_at <= utcnow():
            await self.store.delete_session(digest)
            raise Unauthenticated(BAD_SESSION, reason="SESSION_INVALID")
        return session.user_id, session.expires_at

    async def _tokens(
        self, user_id: str, roles: tuple[str, ...], refresh: str, refresh_expires: datetime
    ) -> Tokens:
        key = await self.keys.signing_key()
        token, expires = access_token(key, user_id, roles, utcnow(), self.config.access_token_ttl_s)
        return Tokens(user_id, roles, token, expires, refresh, refresh_expires)
